//! Short runs of every benchmark in `benches/`, so they cannot rot: each
//! runs with tiny parameters and must produce sane numbers (something
//! measured, no failed request, finite ratios). Nothing here asserts how
//! fast anything is; the full runs and their results are in
//! `docs/benchmarks.md`.

mod common;

use std::time::Duration;

use common::bench::{
    self, Percentiles, engine, gateway, parse_duration, parse_wrk, router, sandbox, scale, wake,
};

#[test]
fn router_bench_measures_direct_nginx_and_bora() {
    let report = router::run(&router::RouterParams::smoke());
    println!("{report}");
    let latency = report.latency.expect("the smoke run makes latency runs");
    for (shape, targets) in [("throughput", report.throughput), ("latency", latency)] {
        for (name, r) in targets.all() {
            assert!(r.requests > 0, "{shape} {name} served no request: {r:?}");
            assert_eq!(r.errors, 0, "{shape} {name} had failed requests: {r:?}");
            assert!(
                r.requests_per_sec.is_finite() && r.requests_per_sec > 0.0,
                "{shape} {name}: {r:?}"
            );
            assert!(
                r.p50 > Duration::ZERO && r.p99 >= r.p50,
                "{shape} {name}: {r:?}"
            );
        }
    }
    assert!(report.throughput_ratio().is_finite() && report.throughput_ratio() > 0.0);
    assert!(report.p99_ratio().is_finite());
}

#[test]
fn wake_bench_measures_light_and_deep_sleep_and_the_runc_floor() {
    let params = wake::WakeParams::smoke();
    let report = wake::run(&params);
    println!("{report}");
    for (name, p) in [
        ("light", report.light),
        ("deep", report.deep),
        ("runc floor", report.floor),
    ] {
        assert_eq!(p.count, params.wakeups, "{name}: {p:?}");
        assert!(p.p50 > Duration::ZERO && p.p99 >= p.p50, "{name}: {p:?}");
    }
    assert!(report.light_ratio().is_finite() && report.deep_ratio().is_finite());
}

#[test]
fn scale_bench_measures_a_step_and_warm_instances() {
    let report = scale::run(&scale::ScaleParams::smoke());
    println!("{report}");
    for (name, r) in [("step", &report.step), ("warm", &report.warm)] {
        assert!(r.requests > 0, "{name} made no request: {r:?}");
        assert_eq!(r.failures, 0, "{name} had failed requests: {:?}", r.errors);
        assert!(r.latency.p50 > Duration::ZERO, "{name}: {r:?}");
    }
    assert!(report.max_healthy >= 1, "{report:?}");
    assert!(report.p99_ratio().is_finite(), "{report:?}");
}

#[test]
fn sandbox_bench_measures_bora_with_and_without_a_pool_and_the_runtimes() {
    let envd = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/envd/bora-envd");
    if !envd.is_file() {
        eprintln!("skipped: build the sandbox agent first (scripts/build-envd.sh)");
        return;
    }
    let params = sandbox::SandboxParams::smoke();
    let report = sandbox::run(&params);
    println!("{report}");
    assert_eq!(report.isolations.len(), 2);
    for r in &report.isolations {
        for (name, p) in [("no pool", r.cold), ("pool", r.pooled), ("peer", r.peer)] {
            assert_eq!(p.count, params.sandboxes, "{:?} {name}: {p:?}", r.isolation);
            assert!(p.p50 > Duration::ZERO && p.p99 >= p.p50, "{name}: {p:?}");
        }
        assert!(r.bora_per_sec > 0.0 && r.peer_per_sec > 0.0, "{r:?}");
        assert!(
            r.bora_idle_bytes.is_finite() && r.peer_idle_bytes.is_finite(),
            "{r:?}"
        );
    }
}

#[test]
fn gateway_bench_measures_overhead_and_affinity() {
    // LiteLLM is not installed in CI: the smoke run measures Bora alone.
    let Some(params) = gateway::GatewayParams::smoke() else {
        return;
    };
    let report = gateway::run(&params);
    println!("{report}");
    assert!(report.litellm_version.is_none());
    for (shape, measured) in [
        ("latency", &report.latency),
        ("throughput", &report.throughput),
    ] {
        for (name, m) in measured.all() {
            assert!(m.requests > 0, "{shape} {name} served no request: {m:?}");
            assert_eq!(m.errors, 0, "{shape} {name} had failed requests: {m:?}");
            assert!(
                m.p50 > Duration::ZERO && m.p99 >= m.p50,
                "{shape} {name}: {m:?}"
            );
        }
    }
    for run in [&report.least_outstanding, &report.affinity] {
        assert_eq!(run.failures, 0, "{run:?}");
        assert_eq!(run.ttft.len(), params.requests, "{run:?}");
        assert!((0.0..=1.0).contains(&run.hit_rate), "{run:?}");
    }
    assert!(report.affinity_p90_gain().is_finite());
}

#[test]
fn engine_bench_measures_bora_alone() {
    // llama.cpp is not installed in CI: the smoke run measures Bora only.
    let Some(params) = engine::EngineParams::smoke() else {
        return;
    };
    let report = engine::run(&params);
    println!("{report}");
    assert!(report.peer.is_none());
    let bora = &report.bora;
    assert_eq!(bora.decode.len(), params.runs, "{bora:?}");
    for s in bora
        .decode
        .iter()
        .chain(bora.rounds.iter().flat_map(|r| &r.streams))
    {
        assert!(
            (2..=params.max_tokens).contains(&s.completion_tokens),
            "{s:?}"
        );
        assert!(s.prompt_tokens > 0 && s.text_chunks > 0, "{s:?}");
        assert!(
            s.first_token <= s.last_token && s.last_token <= s.total,
            "{s:?}"
        );
    }
    assert_eq!(bora.prefill.len(), params.prompt_runs, "{bora:?}");
    for p in &bora.prefill {
        // Aimed at by one probe: near the target, not exactly on it.
        assert!(
            p.prompt_tokens >= params.prompt_tokens / 2
                && p.prompt_tokens <= params.prompt_tokens * 2,
            "{p:?}"
        );
    }
    assert_eq!(bora.rounds.len(), params.rounds, "{bora:?}");
    for r in &bora.rounds {
        assert_eq!(r.streams.len(), params.streams, "{r:?}");
    }
    for rate in [
        bora.decode_rate(),
        bora.prefill_rate(),
        bora.aggregate_rate(),
        bora.concurrency_gain(),
    ] {
        assert!(rate.is_finite() && rate > 0.0, "{bora:?}");
    }
    assert!((0.0..=1.0).contains(&report.other_cpu), "{report:?}");
    // Without a peer there is no ratio, and the table says so.
    assert!(report.decode_ratio().is_nan());
    assert!(report.table().to_string().contains("peer: none"));
}

#[test]
fn engine_bench_reads_streams_and_takes_medians() {
    let mut sse = engine::SseParser::default();
    let ms = Duration::from_millis;
    let chunk = |text: &str| {
        format!(
            "data: {}\n\n",
            serde_json::json!({"choices": [{"index": 0, "delta": {"content": text}}]})
        )
    };
    // The role chunk carries no text; a chunk split across reads counts at
    // the read that completes it.
    sse.feed(
        b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n",
        ms(5),
    )
    .unwrap();
    let one = chunk("1");
    let (head, rest) = one.split_at(10);
    sse.feed(head.as_bytes(), ms(10)).unwrap();
    sse.feed(rest.as_bytes(), ms(20)).unwrap();
    sse.feed(chunk(",").as_bytes(), ms(30)).unwrap();
    sse.feed(chunk(" 2").as_bytes(), ms(120)).unwrap();
    sse.feed(
        b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":4,\"total_tokens\":13}}\n\ndata: [DONE]\n\n",
        ms(121),
    )
    .unwrap();
    assert!(sse.done);
    let s = sse.finish(ms(122)).unwrap();
    assert_eq!((s.first_token, s.last_token), (ms(20), ms(120)));
    assert_eq!(
        (s.prompt_tokens, s.completion_tokens, s.text_chunks),
        (9, 4, 3)
    );
    // 3 tokens after the first in 100 ms.
    assert!((s.decode_rate() - 30.0).abs() < 1e-9, "{s:?}");

    // Text completions' chunks (`text`), and no usage: chunks are counted.
    let mut sse = engine::SseParser::default();
    sse.feed(b"data: {\"choices\":[{\"text\":\"a\"}]}\n", ms(1))
        .unwrap();
    sse.feed(b"data: {\"choices\":[{\"text\":\"b\"}]}\n", ms(2))
        .unwrap();
    assert_eq!(sse.finish(ms(3)).unwrap().completion_tokens, 2);
    // An error chunk, or no text at all, is an error.
    let mut sse = engine::SseParser::default();
    assert!(
        sse.feed(b"data: {\"error\":{\"message\":\"x\"}}\n", ms(1))
            .is_err()
    );
    assert!(engine::SseParser::default().finish(ms(1)).is_err());

    assert_eq!(engine::median([3.0, 1.0, 2.0].into_iter()), 2.0);
    assert_eq!(engine::median([4.0, 1.0, 2.0, 3.0].into_iter()), 2.5);
    assert!(engine::median(std::iter::empty()).is_nan());
    // Every seed a different prompt, each the asked number of words.
    let (a, b) = (engine::random_words(1, 50), engine::random_words(2, 50));
    assert_ne!(a, b);
    assert_eq!(a.split(' ').count(), 50);
    assert_eq!(engine::random_words(1, 50), a);
}

#[test]
fn wrk_reports_are_read() {
    let text = "Running 10s test @ http://127.0.0.1:1/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   620.49us  369.30us  13.35ms   91.22%
    Req/Sec    52.10k     2.67k   58.15k    73.00%
  Latency Distribution
     50%  572.00us
     75%  696.00us
     90%    0.86ms
     99%    1.89ms
  1037143 requests in 10.00s, 150.34MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 12
Requests/sec: 103702.55
Transfer/sec:     15.03MB
";
    let r = parse_wrk(text).unwrap();
    assert_eq!(r.requests, 1_037_143);
    assert_eq!(r.errors, 15);
    assert_eq!(r.p50, Duration::from_micros(572));
    assert_eq!(r.p99, Duration::from_micros(1890));
    assert!((r.requests_per_sec - 103_702.55).abs() < 1e-6);

    let clean = text
        .lines()
        .filter(|l| !l.contains("errors") && !l.contains("Non-2xx"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(parse_wrk(&clean).unwrap().errors, 0);
    assert!(parse_wrk("Running 1s test").is_err());
}

#[test]
fn percentiles_take_the_nearest_rank() {
    let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
    let p = Percentiles::of(&samples);
    assert_eq!(p.count, 100);
    assert_eq!(p.p50, Duration::from_millis(50));
    assert_eq!(p.p99, Duration::from_millis(99));
    assert_eq!(p.max, Duration::from_millis(100));
    // With 30 samples, p99 is the slowest.
    let thirty: Vec<Duration> = (1..=30).map(Duration::from_millis).collect();
    assert_eq!(Percentiles::of(&thirty).p99, Duration::from_millis(30));
    assert_eq!(Percentiles::of(&[]), Percentiles::default());
    let one = Percentiles::of(&[Duration::from_millis(3)]);
    assert_eq!(
        (one.p50, one.p99),
        (Duration::from_millis(3), Duration::from_millis(3))
    );
}

#[test]
fn bench_durations_and_ratios_read_well() {
    assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
    assert_eq!(parse_duration("10"), Some(Duration::from_secs(10)));
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("1.5m"), Some(Duration::from_secs(90)));
    assert_eq!(parse_duration("s"), None);
    assert_eq!(parse_duration("10h"), None);
    assert_eq!(bench::fmt_duration(Duration::from_micros(412)), "412 µs");
    assert_eq!(
        bench::fmt_duration(Duration::from_micros(12_340)),
        "12.34 ms"
    );
    assert_eq!(bench::fmt_duration(Duration::from_millis(2_500)), "2.50 s");
    assert_eq!(
        bench::fmt_delta(Duration::from_micros(900), Duration::from_micros(1000)),
        "-100 µs"
    );
    assert_eq!(bench::fmt_ratio(f64::NAN), "-");
    assert_eq!(bench::fmt_ratio(1.234), "1.23×");
}
