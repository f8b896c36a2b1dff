//! Registry authentication against a small in-process registry that demands Basic or Bearer
//! auth (Debian's `docker-registry` can do neither without extra tooling: bcrypt htpasswd
//! files, token certificates). It serves one image from an OCI layout built by the test.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use bora_image::{Credentials, ImageError, ImageStore, Platform, PullOptions};
use common::{Entry, LayoutBuilder, tarball};

const USER: &str = "alice";
const PASSWORD: &str = "s3cret";
const TOKEN: &str = "token-for-alice";

#[derive(Clone, Copy, PartialEq)]
enum Scheme {
    Basic,
    Bearer,
}

struct Mock {
    scheme: Scheme,
    addr: SocketAddr,
    layout: std::path::PathBuf,
    manifest_digest: String,
    /// Scopes asked of the token endpoint.
    scopes: Mutex<Vec<String>>,
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()
}

fn status(code: StatusCode) -> Response {
    Response::builder()
        .status(code)
        .body(Body::empty())
        .unwrap()
}

async fn handle(State(mock): State<Arc<Mock>>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    let headers = request.headers();
    if path == "/token" {
        let query = request.uri().query().unwrap_or("");
        for pair in query.split('&') {
            if let Some(scope) = pair.strip_prefix("scope=") {
                mock.scopes
                    .lock()
                    .unwrap()
                    .push(scope.replace("%3A", ":").replace("%2F", "/"));
            }
        }
        if authorization(headers) != Some(basic(USER, PASSWORD).as_str()) {
            return status(StatusCode::UNAUTHORIZED);
        }
        return Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(format!(
                r#"{{"token":"{TOKEN}","expires_in":300}}"#
            )))
            .unwrap();
    }
    let expected = match mock.scheme {
        Scheme::Basic => basic(USER, PASSWORD),
        Scheme::Bearer => format!("Bearer {TOKEN}"),
    };
    if authorization(headers) != Some(expected.as_str()) {
        let challenge = match mock.scheme {
            Scheme::Basic => r#"Basic realm="mock registry""#.to_string(),
            Scheme::Bearer => format!(
                r#"Bearer realm="http://{}/token",service="mock",scope="repository:private/app:pull""#,
                mock.addr
            ),
        };
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header(header::WWW_AUTHENTICATE, challenge)
            .body(Body::empty())
            .unwrap();
    }
    let Some(rest) = path.strip_prefix("/v2/private/app/") else {
        return status(StatusCode::NOT_FOUND);
    };
    let (digest, content_type) = match rest.split_once('/') {
        Some(("manifests", "1")) => (
            mock.manifest_digest.clone(),
            Some("application/vnd.oci.image.manifest.v1+json"),
        ),
        Some(("manifests", digest)) => (
            digest.to_string(),
            Some("application/vnd.oci.image.manifest.v1+json"),
        ),
        Some(("blobs", digest)) => (digest.to_string(), None),
        _ => return status(StatusCode::NOT_FOUND),
    };
    let Some(hex) = digest.strip_prefix("sha256:") else {
        return status(StatusCode::NOT_FOUND);
    };
    match std::fs::read(mock.layout.join("blobs/sha256").join(hex)) {
        Ok(bytes) => {
            let mut response = Response::builder().header("Docker-Content-Digest", &digest);
            if let Some(content_type) = content_type {
                response = response.header(header::CONTENT_TYPE, content_type);
            }
            response.body(Body::from(bytes)).unwrap()
        }
        Err(_) => status(StatusCode::NOT_FOUND),
    }
}

/// Start the mock registry serving a one-layer image as `private/app:1`.
async fn start_mock(scheme: Scheme, dir: &std::path::Path) -> Arc<Mock> {
    let layout = LayoutBuilder::new(&dir.join("layout"));
    let layer = layout.gzip_layer(&tarball(&[Entry::File("secret", b"private stuff")]));
    let image = layout.image(&[layer], &Platform::host().architecture, &["/secret"]);
    let manifest_digest = image["digest"].as_str().unwrap().to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock = Arc::new(Mock {
        scheme,
        addr: listener.local_addr().unwrap(),
        layout: layout.dir.clone(),
        manifest_digest,
        scopes: Mutex::new(Vec::new()),
    });
    let router = axum::Router::new()
        .fallback(handle)
        .with_state(mock.clone());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    mock
}

fn options(credentials: Option<(&str, &str)>) -> PullOptions {
    PullOptions {
        credentials: credentials.map(|(username, password)| Credentials {
            username: username.into(),
            password: password.into(),
        }),
        ..PullOptions::default()
    }
}

async fn pull(
    store: &ImageStore,
    mock: &Mock,
    credentials: Option<(&str, &str)>,
) -> Result<bora_image::Image, ImageError> {
    let reference = format!("{}/private/app:1", mock.addr);
    store.pull(&reference, &options(credentials), &|_| {}).await
}

#[tokio::test]
async fn bearer_token_flow() {
    let work = tempfile::tempdir().unwrap();
    let mock = start_mock(Scheme::Bearer, work.path()).await;
    let store = ImageStore::open(work.path().join("images")).unwrap();

    let err = pull(&store, &mock, None).await.unwrap_err();
    let ImageError::Unauthorized {
        credentials_given, ..
    } = &err
    else {
        panic!("expected unauthorized, got {err}");
    };
    assert!(!credentials_given);
    assert!(err.to_string().contains("give credentials"), "{err}");
    assert!(!err.is_retryable());

    let err = pull(&store, &mock, Some((USER, "wrong")))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::Unauthorized {
                credentials_given: true,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("credentials may be wrong"),
        "{err}"
    );

    let image = pull(&store, &mock, Some((USER, PASSWORD))).await.unwrap();
    assert_eq!(
        std::fs::read(image.layers[0].join("secret")).unwrap(),
        b"private stuff"
    );
    let scopes = mock.scopes.lock().unwrap().clone();
    assert!(!scopes.is_empty());
    assert!(
        scopes.iter().all(|s| s == "repository:private/app:pull"),
        "{scopes:?}"
    );
}

#[tokio::test]
async fn basic_auth_flow() {
    let work = tempfile::tempdir().unwrap();
    let mock = start_mock(Scheme::Basic, work.path()).await;
    let store = ImageStore::open(work.path().join("images")).unwrap();

    let err = pull(&store, &mock, None).await.unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::Unauthorized {
                credentials_given: false,
                ..
            }
        ),
        "{err}"
    );
    let err = pull(&store, &mock, Some(("mallory", PASSWORD)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::Unauthorized {
                credentials_given: true,
                ..
            }
        ),
        "{err}"
    );
    let image = pull(&store, &mock, Some((USER, PASSWORD))).await.unwrap();
    assert_eq!(image.config.cmd, ["/secret"]);
}
