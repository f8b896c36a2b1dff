//! Watching a model's answer go by, without holding it up.
//!
//! The gateway needs three things from a response it relays: the token
//! counts (for usage, the audit trail and the tokens-per-minute limit),
//! when the first token went out, and — for a stream the client asked
//! without usage — to drop the usage chunk the gateway asked the replica
//! for. [`Tap`] does that frame by frame:
//!
//! - a stream (`text/event-stream`) is cut into events at blank lines; each
//!   whole event is passed on at once (a partial one waits for its end,
//!   which for the replicas' one-event frames means no wait at all), except
//!   a usage-only chunk the client did not ask for;
//! - any other body passes through as it comes, and up to
//!   [`KEEP_BYTES`] of it are kept to read `usage` from at the end.
//!
//! Pure: bytes in, bytes out.

use bytes::{Bytes, BytesMut};
use serde_json::Value;

/// The most of a non-streamed body kept to read its `usage` (and, with
/// content retention on, to record).
pub(crate) const KEEP_BYTES: usize = 4 * 1024 * 1024;

/// Token counts from a response's `usage`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) prompt_tokens: u64,
    pub(crate) completion_tokens: u64,
}

impl Usage {
    fn from_json(usage: &Value) -> Option<Self> {
        let count = |name: &str| usage.get(name).and_then(Value::as_u64);
        Some(Self {
            prompt_tokens: count("prompt_tokens")?,
            completion_tokens: count("completion_tokens").unwrap_or(0),
        })
    }
}

/// Watches one response body.
#[derive(Debug)]
pub(crate) struct Tap {
    stream: bool,
    /// Drop the usage-only chunk (the client did not ask for it).
    strip_usage: bool,
    /// Stream: the start of an event whose end has not come yet.
    /// Otherwise: the body so far, up to `KEEP_BYTES`.
    pending: BytesMut,
    /// Stream, with content retention: the events passed on.
    kept: Option<BytesMut>,
    overflowed: bool,
    pub(crate) usage: Option<Usage>,
    /// A token (or any answer data) has gone out.
    pub(crate) first_data: bool,
    /// The stream's `data: [DONE]` went out.
    pub(crate) done: bool,
    /// The stream carried an error event from the replica.
    pub(crate) error: Option<String>,
}

impl Tap {
    pub(crate) fn new(stream: bool, strip_usage: bool, keep_content: bool) -> Self {
        Self {
            stream,
            strip_usage,
            pending: BytesMut::new(),
            kept: (stream && keep_content).then(BytesMut::new),
            overflowed: false,
            usage: None,
            first_data: false,
            done: false,
            error: None,
        }
    }

    /// Whether the answer is an event stream.
    pub(crate) fn is_stream(&self) -> bool {
        self.stream
    }

    /// Takes a frame of the replica's body; returns what goes to the client.
    pub(crate) fn feed(&mut self, chunk: Bytes) -> Bytes {
        if !self.stream {
            self.first_data = true;
            if self.pending.len() + chunk.len() <= KEEP_BYTES {
                self.pending.extend_from_slice(&chunk);
            } else {
                self.overflowed = true;
            }
            return chunk;
        }
        self.pending.extend_from_slice(&chunk);
        let mut out = BytesMut::new();
        while let Some(end) = event_end(&self.pending) {
            let event = self.pending.split_to(end);
            if self.pass(&event) {
                out.extend_from_slice(&event);
            }
        }
        if let Some(kept) = &mut self.kept
            && kept.len() + out.len() <= KEEP_BYTES
        {
            kept.extend_from_slice(&out);
        }
        out.freeze()
    }

    /// The replica's body ended: whatever is left over, and the usage of
    /// a non-streamed answer.
    pub(crate) fn finish(&mut self) -> Bytes {
        if !self.stream {
            if !self.overflowed
                && let Ok(body) = serde_json::from_slice::<Value>(&self.pending)
            {
                self.usage = body.get("usage").and_then(Usage::from_json);
            }
            return Bytes::new();
        }
        // A last event without its blank line.
        let rest = self.pending.split().freeze();
        if !rest.is_empty() && self.pass(&rest) {
            return rest;
        }
        Bytes::new()
    }

    /// What was sent, for content retention: the non-streamed body, or
    /// the events passed on.
    pub(crate) fn content(&self) -> Option<String> {
        let bytes = match &self.kept {
            Some(kept) => kept,
            None if !self.stream && !self.overflowed => &self.pending,
            None => return None,
        };
        Some(String::from_utf8_lossy(bytes).into_owned())
    }

    /// Reads one whole event; false to drop it.
    fn pass(&mut self, event: &[u8]) -> bool {
        let Some(data) = event_data(event) else {
            return true;
        };
        if data.trim_ascii() == b"[DONE]" {
            self.done = true;
            return true;
        }
        // Only chunks that mention usage or an error need parsing.
        let mentions = |needle: &[u8]| data.windows(needle.len()).any(|w| w == needle);
        let parsed = (mentions(b"\"usage\"") || mentions(b"\"error\""))
            .then(|| serde_json::from_slice::<Value>(&data).ok())
            .flatten();
        if let Some(chunk) = parsed {
            if let Some(error) = chunk.get("error") {
                self.error = Some(
                    error
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("the model server reported an error")
                        .to_string(),
                );
                return true;
            }
            if let Some(usage) = chunk.get("usage").and_then(Usage::from_json) {
                self.usage = Some(usage);
                let usage_only = chunk
                    .get("choices")
                    .and_then(Value::as_array)
                    .is_some_and(Vec::is_empty);
                if usage_only && self.strip_usage {
                    return false;
                }
            }
        }
        self.first_data = true;
        true
    }
}

/// The length of the first whole event in `buf` (its blank line included).
fn event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The `data:` of an event, its lines joined by newlines (as the SSE spec
/// says); `None` for an event without data (a comment, a keep-alive).
fn event_data(event: &[u8]) -> Option<Vec<u8>> {
    let mut data: Option<Vec<u8>> = None;
    for line in event.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(value) = line.strip_prefix(b"data:") else {
            continue;
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        match &mut data {
            None => data = Some(value.to_vec()),
            Some(data) => {
                data.push(b'\n');
                data.extend_from_slice(value);
            }
        }
    }
    data
}

/// The event a stream ends with when the replica's stream breaks: the
/// OpenAI error shape, as `data:`, so SDKs raise it instead of hanging or
/// reading a truncated stream as complete.
pub(crate) fn error_event(message: &str) -> Bytes {
    let body = serde_json::json!({
        "error": {
            "message": message,
            "type": "server_error",
            "param": null,
            "code": "replica_failed",
        }
    });
    Bytes::from(format!("data: {body}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: &str = r#"data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi"}}]}"#;
    const USAGE: &str = r#"data: {"id":"c1","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#;

    fn feed_all(tap: &mut Tap, parts: &[&str]) -> String {
        let mut out = Vec::new();
        for part in parts {
            out.extend_from_slice(&tap.feed(Bytes::from(part.to_string())));
        }
        out.extend_from_slice(&tap.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_stream_passes_unchanged_and_its_usage_is_read() {
        let mut tap = Tap::new(true, false, false);
        let body = format!("{CHUNK}\n\n{USAGE}\n\ndata: [DONE]\n\n");
        assert_eq!(feed_all(&mut tap, &[&body]), body);
        assert_eq!(
            tap.usage,
            Some(Usage {
                prompt_tokens: 12,
                completion_tokens: 3
            })
        );
        assert!(tap.first_data && tap.done);
        assert_eq!(tap.error, None);
    }

    #[test]
    fn the_usage_chunk_the_client_did_not_ask_for_is_dropped() {
        let mut tap = Tap::new(true, true, false);
        let body = format!("{CHUNK}\n\n{USAGE}\n\ndata: [DONE]\n\n");
        assert_eq!(
            feed_all(&mut tap, &[&body]),
            format!("{CHUNK}\n\ndata: [DONE]\n\n")
        );
        assert_eq!(tap.usage.unwrap().completion_tokens, 3);
    }

    #[test]
    fn events_split_across_frames_are_reassembled_in_order() {
        let mut tap = Tap::new(true, true, false);
        let body = format!("{CHUNK}\r\n\r\n{USAGE}\n\ndata: [DONE]\n\n");
        let (a, b) = body.split_at(30);
        let (b, c) = b.split_at(b.len() - 20);
        // Nothing of a partial event leaves early.
        assert_eq!(tap.feed(Bytes::from(a.to_string())), Bytes::new());
        let out = feed_all(&mut tap, &[b, c]);
        assert_eq!(out, format!("{CHUNK}\r\n\r\ndata: [DONE]\n\n"));
    }

    #[test]
    fn an_error_event_from_the_replica_is_noted_and_passed_on() {
        let mut tap = Tap::new(true, true, false);
        let event = r#"data: {"error":{"message":"the engine stopped","type":"server_error"}}"#;
        let body = format!("{CHUNK}\n\n{event}\n\n");
        assert_eq!(feed_all(&mut tap, &[&body]), body);
        assert_eq!(tap.error.as_deref(), Some("the engine stopped"));
    }

    #[test]
    fn a_plain_body_passes_as_it_comes_and_usage_is_read_at_the_end() {
        let mut tap = Tap::new(false, false, true);
        let body = r#"{"id":"x","choices":[{"message":{"content":"Hi"}}],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}"#;
        let (a, b) = body.split_at(20);
        assert_eq!(
            tap.feed(Bytes::from(a.to_string())),
            Bytes::from(a.to_string())
        );
        assert_eq!(
            tap.feed(Bytes::from(b.to_string())),
            Bytes::from(b.to_string())
        );
        assert_eq!(tap.finish(), Bytes::new());
        assert_eq!(
            tap.usage,
            Some(Usage {
                prompt_tokens: 7,
                completion_tokens: 2
            })
        );
        assert_eq!(tap.content().as_deref(), Some(body));
        // Embeddings count only prompt tokens.
        let mut tap = Tap::new(false, false, false);
        tap.feed(Bytes::from_static(
            br#"{"data":[],"usage":{"prompt_tokens":5,"total_tokens":5}}"#,
        ));
        tap.finish();
        assert_eq!(
            tap.usage,
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 0
            })
        );
    }

    #[test]
    fn the_error_event_is_openai_shaped() {
        let event = error_event("replica r1 broke off");
        let text = std::str::from_utf8(&event).unwrap();
        let data: Value =
            serde_json::from_str(text.strip_prefix("data: ").unwrap().trim_end()).unwrap();
        assert_eq!(data["error"]["message"], "replica r1 broke off");
        assert!(text.ends_with("\n\n"));
    }
}
