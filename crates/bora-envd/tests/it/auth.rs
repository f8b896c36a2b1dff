//! Access token, signed `/files` URLs, and `/init`.

use std::time::Duration;

use bora_envd::Config;
use bora_envd::auth::{Operation, sign};
use serde_json::{Value, json};

use crate::harness::{Envd, TEST_USER, bounded, sdk_start, test_user};
use crate::require_root;

async fn token_envd(token: &str) -> Envd {
    test_user();
    Envd::with_config(Config {
        access_token: Some(token.into()),
        default_user: TEST_USER.into(),
        reap_orphans: false,
        shutdown_grace: Duration::from_secs(2),
        ..Default::default()
    })
    .await
}

#[tokio::test]
async fn missing_or_wrong_token_is_unauthenticated() {
    bounded(async {
        let mut envd = token_envd("s3cret").await;

        // /health needs nothing.
        let resp = envd.client.get(envd.url("/health")).send().await.unwrap();
        assert_eq!(resp.status(), 204);

        let (status, body) = envd.unary("/process.Process/List", json!({}), None).await;
        assert_eq!(status, 401);
        assert_eq!(body["code"], "unauthenticated");
        assert!(body["message"].as_str().unwrap().contains("X-Access-Token"));

        envd.token = Some("wrong".into());
        let (status, body) = envd.unary("/process.Process/List", json!({}), None).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("unauthenticated"))
        );
        let stream = envd
            .stream("/process.Process/Start", sdk_start("true"), None)
            .await;
        assert_eq!(stream.status, 401);

        let resp = envd
            .client
            .get(envd.url("/files?path=/etc/hostname"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], 401);

        for (method, path) in [("POST", "/init"), ("GET", "/envs"), ("GET", "/metrics")] {
            let resp = envd
                .client
                .request(method.parse().unwrap(), envd.url(path))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 401, "{method} {path}");
        }

        envd.token = Some("s3cret".into());
        let (status, body) = envd.unary("/process.Process/List", json!({}), None).await;
        assert_eq!((status, body), (200, json!({"processes": []})));
    })
    .await
}

#[tokio::test]
async fn signed_file_urls_stand_in_for_the_token() {
    require_root!();
    bounded(async {
        let envd = token_envd("tok").await;
        let path = format!("/tmp/signed-{}.txt", std::process::id());
        std::fs::write(&path, "signed").unwrap();

        let sig = sign(&path, Operation::Read, "root", "tok", None);
        let resp = envd
            .client
            .get(envd.url("/files"))
            .query(&[
                ("path", path.as_str()),
                ("username", "root"),
                ("signature", &sig),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "signed");

        // A read signature does not allow writing; an expired one nothing.
        let resp = envd
            .client
            .post(envd.url("/files"))
            .query(&[
                ("path", path.as_str()),
                ("username", "root"),
                ("signature", &sig),
            ])
            .header("content-type", "application/octet-stream")
            .body("overwritten")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        let expired = sign(&path, Operation::Read, "root", "tok", Some(1));
        let resp = envd
            .client
            .get(envd.url("/files"))
            .query(&[
                ("path", path.as_str()),
                ("username", "root"),
                ("signature", &expired),
                ("signature_expiration", "1"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "signed");
        std::fs::remove_file(&path).unwrap();
    })
    .await
}

#[tokio::test]
async fn init_sets_env_vars_token_and_default_user() {
    require_root!();
    bounded(async {
        let mut envd = Envd::start().await;
        let resp = envd
            .client
            .post(envd.url("/init"))
            .json(&json!({
                "envVars": {"FROM_INIT": "yes"},
                "accessToken": "fresh",
                "defaultUser": "root",
                "defaultWorkdir": "/tmp",
                "timestamp": "2026-01-01T00:00:00Z",
                "hyperloopIP": "10.0.0.1"
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);

        // Now the token is required, including for /init itself.
        let (status, _) = envd.unary("/process.Process/List", json!({}), None).await;
        assert_eq!(status, 401);
        let resp = envd
            .client
            .post(envd.url("/init"))
            .json(&json!({"defaultUser": TEST_USER}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);

        envd.token = Some("fresh".into());
        let run = envd
            .stream(
                "/process.Process/Start",
                sdk_start("echo $FROM_INIT; id -u; pwd"),
                None,
            )
            .await
            .collect_process()
            .await;
        assert_eq!(run.stdout, "yes\n0\n/tmp\n");

        let resp = envd
            .client
            .get(envd.url("/envs"))
            .header("x-access-token", "fresh")
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.json::<Value>().await.unwrap(),
            json!({"FROM_INIT": "yes"})
        );

        let resp = envd
            .client
            .post(envd.url("/init"))
            .header("x-access-token", "fresh")
            .json(&json!({"defaultUser": "no-such-user"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let body: Value = resp.json().await.unwrap();
        assert!(body["message"].as_str().unwrap().contains("no-such-user"));

        let resp = envd
            .client
            .get(envd.url("/metrics"))
            .header("x-access-token", "fresh")
            .send()
            .await
            .unwrap();
        let m: Value = resp.json().await.unwrap();
        assert!(m["cpu_count"].as_u64().unwrap() >= 1);
        assert!(m["mem_total"].as_u64().unwrap() > 0);
        assert!(m["disk_total"].as_u64().unwrap() > 0);
    })
    .await
}
