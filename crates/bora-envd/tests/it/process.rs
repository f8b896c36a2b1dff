//! `process.Process` over the wire.

use std::time::Duration;

use bora_envd::connect::envelope;
use bora_envd::proto::process::process_event::Event;
use bora_envd::proto::process::process_event::data_event::Output;
use bora_envd::proto::process::*;
use prost::Message;
use serde_json::{Value, json};

use crate::harness::{Envd, Msg, TEST_USER, b64, bounded, sdk_start, test_user};
use crate::require_root;

#[tokio::test]
async fn echo_streams_start_stdout_and_exit_zero_json() {
    require_root!();
    bounded(async {
        let envd = Envd::start().await;
        let stream = envd
            .stream(
                "/process.Process/Start",
                sdk_start("echo hello && echo oops >&2"),
                None,
            )
            .await;
        assert_eq!(stream.status, 200);
        assert_eq!(stream.content_type, "application/connect+json");
        let run = stream.collect_process().await;
        assert!(run.pid.unwrap() > 0);
        assert_eq!(run.stdout, "hello\n");
        assert_eq!(run.stderr, "oops\n");
        assert_eq!(run.exit_code(), 0);
        let end = run.end.as_ref().unwrap();
        assert_eq!(end["exited"], true);
        assert_eq!(end["status"], "exit status 0");
        assert!(end.get("error").is_none());
        assert_eq!(run.eos, json!({}));
    })
    .await
}

#[tokio::test]
async fn echo_over_binary_protobuf() {
    require_root!();
    bounded(async {
        let envd = Envd::start().await;
        let req = StartRequest {
            process: Some(ProcessConfig {
                cmd: "/bin/echo".into(),
                args: vec!["hello".into(), "proto".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut stream = envd
            .stream_raw(
                "/process.Process/Start",
                "application/connect+proto",
                envelope::encode(0, &req.encode_to_vec()),
                None,
                &[],
            )
            .await;
        assert_eq!(stream.content_type, "application/connect+proto");
        let mut events = Vec::new();
        let eos = loop {
            match stream.next().await.expect("stream ended early") {
                Msg::Data(b) => events.push(StartResponse::decode(b).unwrap().event.unwrap()),
                Msg::End(v) => break v,
            }
        };
        assert_eq!(eos, json!({}));
        assert!(matches!(events[0].event, Some(Event::Start(s)) if s.pid > 0));
        let stdout: Vec<u8> = events
            .iter()
            .filter_map(|e| match &e.event {
                Some(Event::Data(d)) => match &d.output {
                    Some(Output::Stdout(b)) => Some(b.clone()),
                    _ => None,
                },
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(stdout, b"hello proto\n");
        match &events.last().unwrap().event {
            Some(Event::End(end)) => {
                assert_eq!(end.exit_code, 0);
                assert!(end.exited);
            }
            other => panic!("last event is not the end: {other:?}"),
        }
    })
    .await
}

#[tokio::test]
async fn failing_command_reports_its_exit_code() {
    require_root!();
    bounded(async {
        let envd = Envd::start().await;
        let run = envd
            .stream(
                "/process.Process/Start",
                sdk_start("echo before; exit 3"),
                None,
            )
            .await
            .collect_process()
            .await;
        assert_eq!(run.stdout, "before\n");
        assert_eq!(run.exit_code(), 3);
        assert_eq!(run.end.unwrap()["status"], "exit status 3");

        // A command that does not exist is an error of the call itself.
        let run = envd
            .stream(
                "/process.Process/Start",
                json!({"process": {"cmd": "/no/such/binary"}}),
                None,
            )
            .await
            .collect_process()
            .await;
        assert_eq!(run.pid, None);
        assert_eq!(run.eos["error"]["code"], "invalid_argument");
        assert!(
            run.eos["error"]["message"]
                .as_str()
                .unwrap()
                .contains("/no/such/binary"),
            "{}",
            run.eos
        );
    })
    .await
}

async fn start_pid(stream: &mut crate::harness::Stream) -> u32 {
    let first = stream.next_json().await.expect("start event");
    first["event"]["start"]["pid"].as_u64().unwrap() as u32
}

#[tokio::test]
async fn stdin_via_send_input_and_close_stdin() {
    require_root!();
    bounded(async {
        let envd = Envd::start().await;
        let mut stream = envd
            .stream(
                "/process.Process/Start",
                json!({"process": {"cmd": "cat"}, "stdin": true}),
                None,
            )
            .await;
        let pid = start_pid(&mut stream).await;
        let (status, body) = envd
            .unary(
                "/process.Process/SendInput",
                json!({"process": {"pid": pid}, "input": {"stdin": "aGVsbG8gY2F0Cg=="}}),
                None,
            )
            .await;
        assert_eq!((status, &body), (200, &json!({})));
        let (status, _) = envd
            .unary(
                "/process.Process/CloseStdin",
                json!({"process": {"pid": pid}}),
                None,
            )
            .await;
        assert_eq!(status, 200);
        let run = stream.collect_process().await;
        assert_eq!(run.stdout, "hello cat\n");
        assert_eq!(run.exit_code(), 0);

        // Without `stdin: true` there is nothing to write to.
        let mut stream = envd
            .stream("/process.Process/Start", sdk_start("sleep 5"), None)
            .await;
        let pid = start_pid(&mut stream).await;
        let (status, body) = envd
            .unary(
                "/process.Process/SendInput",
                json!({"process": {"pid": pid}, "input": {"stdin": "eA=="}}),
                None,
            )
            .await;
        assert_eq!(status, 400);
        assert_eq!(body["code"], "failed_precondition");
        envd.unary(
            "/process.Process/SendSignal",
            json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}),
            None,
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn stream_input_feeds_stdin_in_order() {
    require_root!();
    bounded(async {
        let envd = Envd::start().await;
        let mut stream = envd
            .stream(
                "/process.Process/Start",
                json!({"process": {"cmd": "cat"}, "stdin": true, "tag": "streamed"}),
                None,
            )
            .await;
        let pid = start_pid(&mut stream).await;
        let mut body = Vec::new();
        for msg in [
            json!({"start": {"process": {"tag": "streamed"}}}),
            json!({"data": {"input": {"stdin": "b25lIA=="}}}), // "one "
            json!({"keepalive": {}}),
            json!({"data": {"input": {"stdin": "dHdvCg=="}}}), // "two\n"
        ] {
            body.extend_from_slice(&envelope::encode(0, msg.to_string().as_bytes()));
        }
        let mut input = envd
            .stream_raw(
                "/process.Process/StreamInput",
                "application/connect+json",
                body,
                None,
                &[],
            )
            .await;
        assert_eq!(input.status, 200);
        assert_eq!(input.next_json().await.unwrap(), json!({}));
        assert_eq!(input.next_json().await.unwrap_err(), json!({}));
        envd.unary(
            "/process.Process/CloseStdin",
            json!({"process": {"pid": pid}}),
            None,
        )
        .await;
        let run = stream.collect_process().await;
        assert_eq!(run.stdout, "one two\n");
    })
    .await
}

#[tokio::test]
async fn send_signal_kills_sleep() {
    require_root!();
    bounded(async {
        let envd = Envd::start().await;
        let mut stream = envd
            .stream("/process.Process/Start", sdk_start("sleep 30"), None)
            .await;
        let pid = start_pid(&mut stream).await;
        let (status, _) = envd
            .unary(
                "/process.Process/SendSignal",
                json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}),
                None,
            )
            .await;
        assert_eq!(status, 200);
        let run = stream.collect_process().await;
        let end = run.end.unwrap();
        assert_eq!(end["exited"], false);
        assert_eq!(end["exitCode"], -1);
        assert_eq!(end["status"], "signal: killed");

        // The process is gone: signalling it again is not_found (the SDK's
        // `kill` returns false on that).
        let (status, body) = envd
            .unary(
                "/process.Process/SendSignal",
                json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGTERM"}),
                None,
            )
            .await;
        assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    })
    .await
}

#[tokio::test]
async fn signal_reaches_the_whole_process_group() {
    require_root!();
    bounded(async {
        let envd = Envd::start().await;
        // bash stays the parent of both sleeps; SIGTERM to the group ends
        // them all, so the stream ends instead of waiting 30s for output
        // pipes held by orphans.
        let mut stream = envd
            .stream(
                "/process.Process/Start",
                sdk_start("sleep 30 & sleep 30; wait"),
                None,
            )
            .await;
        let pid = start_pid(&mut stream).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        envd.unary(
            "/process.Process/SendSignal",
            json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGTERM"}),
            None,
        )
        .await;
        let started = std::time::Instant::now();
        let run = stream.collect_process().await;
        assert_eq!(run.end.unwrap()["status"], "signal: terminated");
        assert!(started.elapsed() < Duration::from_secs(10));
    })
    .await
}

#[tokio::test]
async fn list_shows_running_tagged_process_and_connect_reattaches() {
    require_root!();
    bounded(async {
        let envd = Envd::start().await;
        let mut first = envd
            .stream(
                "/process.Process/Start",
                json!({
                    "process": {"cmd": "/bin/bash", "args": ["-c", "read line; echo got $line"],
                                "envs": {"FOO": "bar"}},
                    "tag": "worker",
                    "stdin": true
                }),
                None,
            )
            .await;
        let pid = start_pid(&mut first).await;

        let (status, list) = envd.unary("/process.Process/List", json!({}), None).await;
        assert_eq!(status, 200);
        let procs = list["processes"].as_array().unwrap();
        let p = procs
            .iter()
            .find(|p| p["pid"] == pid)
            .unwrap_or_else(|| panic!("pid {pid} not in {list}"));
        assert_eq!(p["tag"], "worker");
        assert_eq!(p["config"]["cmd"], "/bin/bash");
        assert_eq!(p["config"]["envs"]["FOO"], "bar");

        // The first client goes away; the process keeps running.
        drop(first);
        tokio::time::sleep(Duration::from_millis(100)).await;

        let mut second = envd
            .stream(
                "/process.Process/Connect",
                json!({"process": {"tag": "worker"}}),
                None,
            )
            .await;
        assert_eq!(start_pid(&mut second).await, pid);
        envd.unary(
            "/process.Process/SendInput",
            json!({"process": {"tag": "worker"}, "input": {"stdin": "aGkK"}}),
            None,
        )
        .await;
        let run = second.collect_process().await;
        assert_eq!(run.stdout, "got hi\n");
        assert_eq!(run.exit_code(), 0);

        // Ended processes leave the list, and cannot be connected to.
        let (_, list) = envd.unary("/process.Process/List", json!({}), None).await;
        assert!(!list.to_string().contains("worker"), "{list}");
        let run = envd
            .stream(
                "/process.Process/Connect",
                json!({"process": {"pid": pid}}),
                None,
            )
            .await
            .collect_process()
            .await;
        assert_eq!(run.eos["error"]["code"], "not_found");
    })
    .await
}

#[tokio::test]
async fn runs_as_the_requested_user_with_its_identity() {
    require_root!();
    bounded(async {
        let envd = Envd::start().await;
        let (uid, _gid, home) = test_user();
        let script = "id -u; echo $HOME; echo $USER; pwd";

        let as_default = envd
            .stream("/process.Process/Start", sdk_start(script), None)
            .await
            .collect_process()
            .await;
        assert_eq!(
            as_default.stdout,
            format!("{uid}\n{home}\n{TEST_USER}\n{home}\n")
        );

        let as_root = envd
            .stream("/process.Process/Start", sdk_start(script), Some("root"))
            .await
            .collect_process()
            .await;
        assert_eq!(as_root.stdout, "0\n/root\nroot\n/root\n");

        let explicit = envd
            .stream(
                "/process.Process/Start",
                sdk_start("id -u"),
                Some(TEST_USER),
            )
            .await
            .collect_process()
            .await;
        assert_eq!(explicit.stdout, format!("{uid}\n"));

        // cwd and envs from the request.
        let run = envd
            .stream(
                "/process.Process/Start",
                json!({"process": {"cmd": "/bin/sh", "args": ["-c", "pwd; echo $GREETING"],
                                   "cwd": "/tmp", "envs": {"GREETING": "hej"}}}),
                None,
            )
            .await
            .collect_process()
            .await;
        assert_eq!(run.stdout, "/tmp\nhej\n");

        let run = envd
            .stream(
                "/process.Process/Start",
                sdk_start("id"),
                Some("nobody-here"),
            )
            .await
            .collect_process()
            .await;
        assert_eq!(run.eos["error"]["code"], "unauthenticated");
        assert!(
            run.eos["error"]["message"]
                .as_str()
                .unwrap()
                .contains("nobody-here")
        );
    })
    .await
}

#[tokio::test]
async fn pty_runs_a_terminal_and_resizes() {
    require_root!();
    bounded(async {
        let envd = Envd::start().await;
        let mut stream = envd
            .stream(
                "/process.Process/Start",
                json!({
                    "process": {"cmd": "/bin/bash", "args": ["-c", "tty >/dev/null && echo is-a-tty; stty size; read x; stty size"]},
                    "pty": {"size": {"cols": 100, "rows": 30}}
                }),
                None,
            )
            .await;
        let pid = start_pid(&mut stream).await;
        let mut out = String::new();
        while !out.contains("30 100") {
            let msg = stream.next_json().await.expect("pty output");
            if let Some(p) = msg["event"]["data"].get("pty") {
                out.push_str(&b64(p));
            }
        }
        assert!(out.contains("is-a-tty"), "{out:?}");
        let (status, _) = envd
            .unary(
                "/process.Process/Update",
                json!({"process": {"pid": pid}, "pty": {"size": {"cols": 120, "rows": 40}}}),
                None,
            )
            .await;
        assert_eq!(status, 200);
        let (status, _) = envd
            .unary(
                "/process.Process/SendInput",
                json!({"process": {"pid": pid}, "input": {"pty": "Cg=="}}),
                None,
            )
            .await;
        assert_eq!(status, 200);
        let run = stream.collect_process().await;
        assert!(run.pty.contains("40 120"), "{:?}", run.pty);
        assert_eq!(run.exit_code(), 0);
    })
    .await
}

#[tokio::test]
async fn keepalives_flow_on_idle_streams() {
    require_root!();
    bounded(async {
        let envd = Envd::start().await;
        let mut stream = envd
            .stream_raw(
                "/process.Process/Start",
                "application/connect+json",
                envelope::encode(0, sdk_start("sleep 2.5").to_string().as_bytes()),
                None,
                &[("keepalive-ping-interval", "1")],
            )
            .await;
        let mut keepalives = 0;
        loop {
            match stream.next_json().await {
                Ok(m) if m["event"].get("keepalive").is_some() => keepalives += 1,
                Ok(_) => {}
                Err(eos) => {
                    assert_eq!(eos, json!({}));
                    break;
                }
            }
        }
        assert!(keepalives >= 2, "only {keepalives} keepalives in 2.5s");
    })
    .await
}

#[tokio::test]
async fn bad_requests_get_connect_errors() {
    bounded(async {
        let envd = Envd::start().await;
        let (status, body) = envd
            .unary("/process.Process/SendSignal", json!({"signal": 9}), None)
            .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("invalid_argument"))
        );
        let (status, body) = envd
            .unary(
                "/process.Process/SendInput",
                json!({"process": {"pid": 999999}}),
                None,
            )
            .await;
        assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
        assert!(body["message"].as_str().unwrap().contains("999999"));
        let (status, body) = envd.unary("/process.Process/Nope", json!({}), None).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (404, Some("unimplemented"))
        );
        let (status, body) = envd
            .unary("/process.Process/List", Value::String("{".into()), None)
            .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("invalid_argument"))
        );

        // Truncated and oversized stream envelopes are clean errors.
        let mut s = envd
            .stream_raw(
                "/process.Process/Start",
                "application/connect+json",
                vec![0u8, 0, 0, 0, 50, b'{'],
                None,
                &[],
            )
            .await;
        let eos = s.next_json().await.unwrap_err();
        assert_eq!(eos["error"]["code"], "invalid_argument", "{eos}");
        let mut s = envd
            .stream_raw(
                "/process.Process/Start",
                "application/connect+json",
                vec![0u8, 0x7f, 0xff, 0xff, 0xff],
                None,
                &[],
            )
            .await;
        let eos = s.next_json().await.unwrap_err();
        assert_eq!(eos["error"]["code"], "resource_exhausted", "{eos}");

        let resp = envd
            .client
            .post(envd.url("/process.Process/List"))
            .header("content-type", "text/plain")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 415);
    })
    .await
}
