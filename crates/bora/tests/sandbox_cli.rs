//! End to end: `bora sandboxes …` (the CLI of issue 4) against a real
//! `bora server` with the `base` template under gVisor — create, list,
//! exec with streamed output and exit statuses, users, copying files in
//! and out, kill — and the exec API's stream itself.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{BORA, Server, sandbox_server, stderr, stdout};

/// `bora ARGS` with `input` on standard input.
fn cli_with_input(server: &Server, args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(BORA)
        .args(args)
        .env("BORA_DATA_DIR", &server.data_dir)
        .env_remove("BORA_URL")
        .env_remove("BORA_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[track_caller]
fn assert_fails_with(out: &Output, code: i32, needles: &[&str]) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
    for needle in needles {
        assert!(
            stderr(out).contains(needle),
            "stderr lacks {needle:?}:\n{}",
            stderr(out)
        );
    }
}

#[test]
fn the_cli_creates_runs_in_copies_and_kills_sandboxes() {
    let Some(server) = sandbox_server(&[]) else {
        return;
    };

    // create: only the id on stdout, so `ID=$(bora sandboxes create)` works.
    let created = server.cli(&["sandboxes", "create", "--timeout", "10m", "-m", "test=cli"]);
    assert!(created.status.success(), "{}", stderr(&created));
    let id = stdout(&created).trim().to_string();
    assert_eq!(id.len(), 20, "{id:?}");
    assert!(
        stderr(&created).contains("bora sandboxes exec"),
        "{}",
        stderr(&created)
    );

    let list = server.cli_ok(&["sandboxes", "list"]);
    let row = list
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} not listed:\n{list}"));
    assert!(row.contains("running") && row.contains("test=cli"), "{row}");
    let got = server.cli_ok(&["sbx", "get", &id, "-o", "json"]);
    let got: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(got["state"], "running");

    // exec: output, exit status, stderr apart from stdout.
    let out = server.cli(&[
        "sandboxes",
        "exec",
        &id,
        "--",
        "echo hello && python3 -c 'print(6*7)'",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello\n42\n");
    let out = server.cli(&[
        "sandboxes",
        "exec",
        &id,
        "--",
        "python3",
        "-c",
        "print(6*7)",
    ]);
    assert_eq!(stdout(&out), "42\n", "{}", stderr(&out));
    let out = server.cli(&["sandboxes", "exec", &id, "--", "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let out = server.cli(&["sandboxes", "exec", &id, "--", "echo out; echo err >&2"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out), "out\n");
    assert_eq!(stderr(&out), "err\n");
    let out = server.cli(&["sandboxes", "exec", &id, "--", "kill -9 $$"]);
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));

    // Users, working directory, environment.
    assert_eq!(
        server.cli_ok(&["sandboxes", "exec", &id, "--user", "root", "--", "id", "-u"]),
        "0\n"
    );
    assert_eq!(
        server.cli_ok(&["sandboxes", "exec", &id, "--", "id", "-un"]),
        "user\n"
    );
    assert_eq!(
        server.cli_ok(&[
            "sandboxes",
            "exec",
            &id,
            "-w",
            "/tmp",
            "-e",
            "GREETING=hi there",
            "--",
            "echo \"$GREETING from $(pwd)\""
        ]),
        "hi there from /tmp\n"
    );
    let out = server.cli(&["sandboxes", "exec", &id, "--user", "mallory", "--", "true"]);
    assert_fails_with(&out, 1, &["mallory"]);

    // cp in and back out, byte for byte (not UTF-8, with NULs).
    let dir = tempfile::tempdir().unwrap();
    let original: Vec<u8> = (0..=255u8)
        .cycle()
        .take(200_000)
        .chain(*b"\xff\xfe\0end")
        .collect();
    let local = dir.path().join("data.bin");
    std::fs::write(&local, &original).unwrap();
    let remote = format!("{id}:/tmp/nested/dir/data.bin");
    server.cli_ok(&["sandboxes", "cp", local.to_str().unwrap(), &remote]);
    assert_eq!(
        server.cli_ok(&[
            "sandboxes",
            "exec",
            &id,
            "--",
            "find /tmp/nested/dir/data.bin -printf '%u %s\\n'"
        ]),
        format!("user {}\n", original.len())
    );
    let back = dir.path().join("back.bin");
    server.cli_ok(&["sandboxes", "cp", &remote, back.to_str().unwrap()]);
    assert!(
        std::fs::read(&back).unwrap() == original,
        "the copy differs"
    );
    // Into a local directory, and to standard output.
    let into = dir.path().join("into");
    std::fs::create_dir(&into).unwrap();
    server.cli_ok(&["sandboxes", "cp", &remote, into.to_str().unwrap()]);
    assert!(std::fs::read(into.join("data.bin")).unwrap() == original);
    let out = server.cli(&["sandboxes", "cp", &remote, "-"]);
    assert!(
        out.status.success() && out.stdout == original,
        "{}",
        stderr(&out)
    );
    // From standard input, as root.
    let out = cli_with_input(
        &server,
        &[
            "sandboxes",
            "cp",
            "--user",
            "root",
            "-",
            &format!("{id}:/root/from-stdin.txt"),
        ],
        b"piped\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        server.cli_ok(&[
            "sandboxes",
            "exec",
            &id,
            "-u",
            "root",
            "--",
            "cat ~/from-stdin.txt"
        ]),
        "piped\n"
    );

    // Copy errors say what is wrong.
    let missing_local = dir.path().join("never-written");
    let out = server.cli(&[
        "sandboxes",
        "cp",
        &format!("{id}:/tmp/nope/missing.txt"),
        missing_local.to_str().unwrap(),
    ]);
    assert_fails_with(&out, 1, &["/tmp/nope/missing.txt", "does not exist"]);
    assert!(!missing_local.exists(), "a failed download leaves no file");
    let out = server.cli(&["sandboxes", "cp", "/no/such/local/file", &remote]);
    assert_fails_with(&out, 1, &["cannot read /no/such/local/file"]);
    let out = server.cli(&["sandboxes", "cp", &remote, &format!("{id}:/tmp/x")]);
    assert_fails_with(&out, 1, &["both", "are in sandboxes"]);
    let out = server.cli(&["sandboxes", "cp", "./a", "./b"]);
    assert_fails_with(&out, 1, &["neither", "ID:/path"]);

    // kill: gone from the list, and exec says why it cannot run.
    assert_eq!(
        server.cli_ok(&["sandboxes", "kill", &id]),
        format!("sandbox {id} killed\n")
    );
    let list = server.cli(&["sandboxes", "list"]);
    assert!(list.status.success());
    assert_eq!(stdout(&list), "", "{}", stdout(&list));
    assert!(
        stderr(&list).contains("no sandboxes running"),
        "{}",
        stderr(&list)
    );
    let out = server.cli(&["sandboxes", "exec", &id, "--", "true"]);
    assert_fails_with(&out, 1, &[&id, "killed", "no longer runs"]);
    let out = server.cli(&["sandboxes", "exec", "nosuchsandbox", "--", "true"]);
    assert_fails_with(&out, 1, &["nosuchsandbox"]);
}

/// The exec API streams output while the command runs: the command waits
/// (up to a minute) for a file the test creates only after it has read the
/// first line from the stream. A buffered stream would deliver that line
/// only at the end, after "gave up".
#[test]
fn exec_streams_output_as_it_happens() {
    let Some(server) = sandbox_server(&[]) else {
        return;
    };
    let id = server.cli_ok(&["sandboxes", "create"]).trim().to_string();

    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let cmd = "echo first; for i in $(seq 600); do [ -e /tmp/go ] && break; sleep 0.1; done; \
               [ -e /tmp/go ] && echo second || echo gave up";
    let response = http
        .post(format!("http://{}/v1/sandboxes/{id}/exec", server.api))
        .bearer_auth(server.token())
        .json(&serde_json::json!({ "cmd": cmd }))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let mut lines = BufReader::new(response).lines();
    let mut next = || -> serde_json::Value {
        serde_json::from_str(&lines.next().expect("another event").unwrap()).unwrap()
    };
    assert_eq!(next()["type"], "start");
    assert_eq!(
        next(),
        serde_json::json!({"type": "stdout", "data": "Zmlyc3QK"})
    ); // first\n
    let touched = server.cli(&["sandboxes", "exec", &id, "--", "touch /tmp/go"]);
    assert!(touched.status.success(), "{}", stderr(&touched));
    assert_eq!(
        next(),
        serde_json::json!({"type": "stdout", "data": "c2Vjb25kCg=="})
    ); // second\n
    assert_eq!(
        next(),
        serde_json::json!({"type": "exit", "exit_code": 0, "signal": null, "error": null})
    );

    // Bad requests get the API's errors.
    let bad = http
        .post(format!("http://{}/v1/sandboxes/{id}/exec", server.api))
        .bearer_auth(server.token())
        .json(&serde_json::json!({ "cmd": "true", "shell": "zsh" }))
        .send()
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: serde_json::Value = bad.json().unwrap();
    assert!(
        body["error"]["message"].as_str().unwrap().contains("shell"),
        "{body}"
    );
    let missing = http
        .get(format!("http://{}/v1/sandboxes/{id}/files", server.api))
        .bearer_auth(server.token())
        .send()
        .unwrap();
    assert_eq!(missing.status(), 400);
    let paused = server.cli(&["sandboxes", "pause", &id]);
    assert!(paused.status.success(), "{}", stderr(&paused));
    let conflict = http
        .post(format!("http://{}/v1/sandboxes/{id}/exec", server.api))
        .bearer_auth(server.token())
        .json(&serde_json::json!({ "cmd": "true" }))
        .send()
        .unwrap();
    assert_eq!(conflict.status(), 409);
    let body: serde_json::Value = conflict.json().unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("paused"),
        "{body}"
    );
    server.cli_ok(&["sandboxes", "resume", &id]);
    assert_eq!(
        server.cli_ok(&["sandboxes", "exec", &id, "--", "echo back"]),
        "back\n"
    );
    server.cli_ok(&["sandboxes", "kill", &id]);
}
