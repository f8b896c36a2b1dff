//! Package `process`: the messages of E2B's `spec/envd/process/process.proto`
//! (service `process.Process`), field numbers as upstream.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::json;
use super::proto_enum;

proto_enum! {
    /// `process.Signal`.
    Signal = "process.Signal" {
        Unspecified = 0 => "SIGNAL_UNSPECIFIED",
        Sigterm = 15 => "SIGNAL_SIGTERM",
        Sigkill = 9 => "SIGNAL_SIGKILL",
    }
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Pty {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<PtySize>,
}

/// `PTY.Size`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PtySize {
    #[prost(uint32, tag = "1")]
    #[serde(with = "json::int32")]
    pub cols: u32,
    #[prost(uint32, tag = "2")]
    #[serde(with = "json::int32")]
    pub rows: u32,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ProcessConfig {
    #[prost(string, tag = "1")]
    pub cmd: String,
    #[prost(string, repeated, tag = "2")]
    pub args: Vec<String>,
    #[prost(map = "string, string", tag = "3")]
    pub envs: HashMap<String, String>,
    #[prost(string, optional, tag = "4")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct ListRequest {}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ProcessInfo {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<ProcessConfig>,
    #[prost(uint32, tag = "2")]
    #[serde(with = "json::int32")]
    pub pid: u32,
    #[prost(string, optional, tag = "3")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ListResponse {
    #[prost(message, repeated, tag = "1")]
    pub processes: Vec<ProcessInfo>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct StartRequest {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessConfig>,
    #[prost(message, optional, tag = "2")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pty: Option<Pty>,
    #[prost(string, optional, tag = "3")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Whether the process gets a stdin pipe. Absent means yes (older SDKs
    /// always had one); newer SDKs send `false` unless asked.
    #[prost(bool, optional, tag = "4")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin: Option<bool>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct UpdateRequest {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSelector>,
    #[prost(message, optional, tag = "2")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pty: Option<Pty>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct UpdateResponse {}

/// `ProcessEvent`: one event of a process stream.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(try_from = "ProcessEventJson", into = "ProcessEventJson")]
pub struct ProcessEvent {
    #[prost(oneof = "process_event::Event", tags = "1, 2, 3, 4")]
    pub event: Option<process_event::Event>,
}

pub mod process_event {
    use super::*;

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Event {
        #[prost(message, tag = "1")]
        Start(StartEvent),
        #[prost(message, tag = "2")]
        Data(DataEvent),
        #[prost(message, tag = "3")]
        End(EndEvent),
        #[prost(message, tag = "4")]
        Keepalive(KeepAlive),
    }

    #[derive(Clone, Copy, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
    #[serde(default, rename_all = "camelCase")]
    pub struct StartEvent {
        #[prost(uint32, tag = "1")]
        #[serde(with = "json::int32")]
        pub pid: u32,
    }

    #[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
    #[serde(try_from = "DataEventJson", into = "DataEventJson")]
    pub struct DataEvent {
        #[prost(oneof = "data_event::Output", tags = "1, 2, 3")]
        pub output: Option<data_event::Output>,
    }

    pub mod data_event {
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Output {
            #[prost(bytes, tag = "1")]
            Stdout(Vec<u8>),
            #[prost(bytes, tag = "2")]
            Stderr(Vec<u8>),
            #[prost(bytes, tag = "3")]
            Pty(Vec<u8>),
        }
    }

    #[derive(Default, Serialize, Deserialize)]
    #[serde(default)]
    pub(super) struct DataEventJson {
        #[serde(with = "json::opt_bytes", skip_serializing_if = "Option::is_none")]
        stdout: Option<Vec<u8>>,
        #[serde(with = "json::opt_bytes", skip_serializing_if = "Option::is_none")]
        stderr: Option<Vec<u8>>,
        #[serde(with = "json::opt_bytes", skip_serializing_if = "Option::is_none")]
        pty: Option<Vec<u8>>,
    }

    impl TryFrom<DataEventJson> for DataEvent {
        type Error = String;
        fn try_from(j: DataEventJson) -> Result<Self, String> {
            use data_event::Output;
            let set = [j.stdout.is_some(), j.stderr.is_some(), j.pty.is_some()];
            if set.iter().filter(|s| **s).count() > 1 {
                return Err("more than one of stdout, stderr, pty is set".into());
            }
            let output = (j.stdout.map(Output::Stdout))
                .or(j.stderr.map(Output::Stderr))
                .or(j.pty.map(Output::Pty));
            Ok(DataEvent { output })
        }
    }

    impl From<DataEvent> for DataEventJson {
        fn from(e: DataEvent) -> Self {
            use data_event::Output;
            let mut j = DataEventJson::default();
            match e.output {
                Some(Output::Stdout(b)) => j.stdout = Some(b),
                Some(Output::Stderr(b)) => j.stderr = Some(b),
                Some(Output::Pty(b)) => j.pty = Some(b),
                None => {}
            }
            j
        }
    }

    #[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
    #[serde(default, rename_all = "camelCase")]
    pub struct EndEvent {
        #[prost(sint32, tag = "1")]
        #[serde(with = "json::int32", alias = "exit_code")]
        pub exit_code: i32,
        #[prost(bool, tag = "2")]
        pub exited: bool,
        #[prost(string, tag = "3")]
        pub status: String,
        #[prost(string, optional, tag = "4")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub error: Option<String>,
    }

    #[derive(Clone, Copy, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
    #[serde(default)]
    pub struct KeepAlive {}
}

#[derive(Default, Serialize, Deserialize)]
#[serde(default)]
struct ProcessEventJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    start: Option<process_event::StartEvent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<process_event::DataEvent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    end: Option<process_event::EndEvent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keepalive: Option<process_event::KeepAlive>,
}

impl TryFrom<ProcessEventJson> for ProcessEvent {
    type Error = String;
    fn try_from(j: ProcessEventJson) -> Result<Self, String> {
        use process_event::Event;
        let set = [
            j.start.is_some(),
            j.data.is_some(),
            j.end.is_some(),
            j.keepalive.is_some(),
        ];
        if set.iter().filter(|s| **s).count() > 1 {
            return Err("more than one of start, data, end, keepalive is set".into());
        }
        let event = (j.start.map(Event::Start))
            .or(j.data.map(Event::Data))
            .or(j.end.map(Event::End))
            .or(j.keepalive.map(Event::Keepalive));
        Ok(ProcessEvent { event })
    }
}

impl From<ProcessEvent> for ProcessEventJson {
    fn from(e: ProcessEvent) -> Self {
        use process_event::Event;
        let mut j = ProcessEventJson::default();
        match e.event {
            Some(Event::Start(v)) => j.start = Some(v),
            Some(Event::Data(v)) => j.data = Some(v),
            Some(Event::End(v)) => j.end = Some(v),
            Some(Event::Keepalive(v)) => j.keepalive = Some(v),
            None => {}
        }
        j
    }
}

impl ProcessEvent {
    pub fn start(pid: u32) -> Self {
        Self {
            event: Some(process_event::Event::Start(process_event::StartEvent {
                pid,
            })),
        }
    }

    pub fn data(output: process_event::data_event::Output) -> Self {
        Self {
            event: Some(process_event::Event::Data(process_event::DataEvent {
                output: Some(output),
            })),
        }
    }

    pub fn end(end: process_event::EndEvent) -> Self {
        Self {
            event: Some(process_event::Event::End(end)),
        }
    }

    pub fn keepalive() -> Self {
        Self {
            event: Some(process_event::Event::Keepalive(process_event::KeepAlive {})),
        }
    }
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct StartResponse {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<ProcessEvent>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ConnectResponse {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<ProcessEvent>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SendInputRequest {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSelector>,
    #[prost(message, optional, tag = "2")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<ProcessInput>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct SendInputResponse {}

/// `ProcessInput`: bytes for the process's stdin or its PTY.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(try_from = "ProcessInputJson", into = "ProcessInputJson")]
pub struct ProcessInput {
    #[prost(oneof = "process_input::Input", tags = "1, 2")]
    pub input: Option<process_input::Input>,
}

pub mod process_input {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Input {
        #[prost(bytes, tag = "1")]
        Stdin(Vec<u8>),
        #[prost(bytes, tag = "2")]
        Pty(Vec<u8>),
    }
}

#[derive(Default, Serialize, Deserialize)]
#[serde(default)]
struct ProcessInputJson {
    #[serde(with = "json::opt_bytes", skip_serializing_if = "Option::is_none")]
    stdin: Option<Vec<u8>>,
    #[serde(with = "json::opt_bytes", skip_serializing_if = "Option::is_none")]
    pty: Option<Vec<u8>>,
}

impl TryFrom<ProcessInputJson> for ProcessInput {
    type Error = String;
    fn try_from(j: ProcessInputJson) -> Result<Self, String> {
        use process_input::Input;
        match (j.stdin, j.pty) {
            (Some(_), Some(_)) => Err("both stdin and pty are set".into()),
            (stdin, pty) => Ok(ProcessInput {
                input: stdin.map(Input::Stdin).or(pty.map(Input::Pty)),
            }),
        }
    }
}

impl From<ProcessInput> for ProcessInputJson {
    fn from(i: ProcessInput) -> Self {
        use process_input::Input;
        match i.input {
            Some(Input::Stdin(b)) => Self {
                stdin: Some(b),
                pty: None,
            },
            Some(Input::Pty(b)) => Self {
                stdin: None,
                pty: Some(b),
            },
            None => Self::default(),
        }
    }
}

/// `StreamInputRequest`: one message of the client-streaming input RPC: a
/// start naming the process, then data, with keepalives in between.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(try_from = "StreamInputRequestJson", into = "StreamInputRequestJson")]
pub struct StreamInputRequest {
    #[prost(oneof = "stream_input_request::Event", tags = "1, 2, 3")]
    pub event: Option<stream_input_request::Event>,
}

pub mod stream_input_request {
    use super::*;

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Event {
        #[prost(message, tag = "1")]
        Start(StartEvent),
        #[prost(message, tag = "2")]
        Data(DataEvent),
        #[prost(message, tag = "3")]
        Keepalive(KeepAlive),
    }

    #[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
    #[serde(default, rename_all = "camelCase")]
    pub struct StartEvent {
        #[prost(message, optional, tag = "1")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub process: Option<ProcessSelector>,
    }

    /// Upstream numbers the only field 2.
    #[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
    #[serde(default, rename_all = "camelCase")]
    pub struct DataEvent {
        #[prost(message, optional, tag = "2")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub input: Option<ProcessInput>,
    }

    #[derive(Clone, Copy, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
    #[serde(default)]
    pub struct KeepAlive {}
}

#[derive(Default, Serialize, Deserialize)]
#[serde(default)]
struct StreamInputRequestJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    start: Option<stream_input_request::StartEvent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<stream_input_request::DataEvent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keepalive: Option<stream_input_request::KeepAlive>,
}

impl TryFrom<StreamInputRequestJson> for StreamInputRequest {
    type Error = String;
    fn try_from(j: StreamInputRequestJson) -> Result<Self, String> {
        use stream_input_request::Event;
        let set = [j.start.is_some(), j.data.is_some(), j.keepalive.is_some()];
        if set.iter().filter(|s| **s).count() > 1 {
            return Err("more than one of start, data, keepalive is set".into());
        }
        let event = (j.start.map(Event::Start))
            .or(j.data.map(Event::Data))
            .or(j.keepalive.map(Event::Keepalive));
        Ok(StreamInputRequest { event })
    }
}

impl From<StreamInputRequest> for StreamInputRequestJson {
    fn from(r: StreamInputRequest) -> Self {
        use stream_input_request::Event;
        let mut j = Self::default();
        match r.event {
            Some(Event::Start(v)) => j.start = Some(v),
            Some(Event::Data(v)) => j.data = Some(v),
            Some(Event::Keepalive(v)) => j.keepalive = Some(v),
            None => {}
        }
        j
    }
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamInputResponse {}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SendSignalRequest {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSelector>,
    #[prost(enumeration = "Signal", tag = "2")]
    #[serde(
        serialize_with = "json::enumeration::serialize::<_, Signal>",
        deserialize_with = "json::enumeration::deserialize::<_, Signal>"
    )]
    pub signal: i32,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct SendSignalResponse {}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CloseStdinRequest {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSelector>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct CloseStdinResponse {}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ConnectRequest {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSelector>,
}

/// `ProcessSelector`: a process by pid or by tag.
///
/// The pattern for every message holding a oneof: prost sees the enum, the
/// JSON mapping goes through `ProcessSelectorJson`, which has one optional
/// field per alternative and refuses more than one being set.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(try_from = "ProcessSelectorJson", into = "ProcessSelectorJson")]
pub struct ProcessSelector {
    #[prost(oneof = "process_selector::Selector", tags = "1, 2")]
    pub selector: Option<process_selector::Selector>,
}

pub mod process_selector {
    #[derive(Clone, PartialEq, Eq, prost::Oneof)]
    pub enum Selector {
        #[prost(uint32, tag = "1")]
        Pid(u32),
        #[prost(string, tag = "2")]
        Tag(String),
    }
}

#[derive(Default, Serialize, Deserialize)]
#[serde(default)]
struct ProcessSelectorJson {
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "opt_u32")]
    pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<String>,
}

fn opt_u32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    json::int32::deserialize::<_, u32>(d).map(Some)
}

impl TryFrom<ProcessSelectorJson> for ProcessSelector {
    type Error = String;
    fn try_from(j: ProcessSelectorJson) -> Result<Self, String> {
        use process_selector::Selector;
        match (j.pid, j.tag) {
            (Some(_), Some(_)) => Err("both pid and tag are set".into()),
            (pid, tag) => Ok(ProcessSelector {
                selector: pid.map(Selector::Pid).or(tag.map(Selector::Tag)),
            }),
        }
    }
}

impl From<ProcessSelector> for ProcessSelectorJson {
    fn from(s: ProcessSelector) -> Self {
        use process_selector::Selector;
        match s.selector {
            Some(Selector::Pid(pid)) => Self {
                pid: Some(pid),
                tag: None,
            },
            Some(Selector::Tag(tag)) => Self {
                pid: None,
                tag: Some(tag),
            },
            None => Self::default(),
        }
    }
}

impl ProcessSelector {
    pub fn pid(pid: u32) -> Self {
        Self {
            selector: Some(process_selector::Selector::Pid(pid)),
        }
    }

    pub fn tag(tag: impl Into<String>) -> Self {
        Self {
            selector: Some(process_selector::Selector::Tag(tag.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::process_event::data_event::Output;
    use super::process_event::{EndEvent, Event};
    use super::*;
    use prost::Message;
    use serde_json::json;

    fn json_round_trip<M>(m: &M) -> M
    where
        M: Serialize + for<'de> Deserialize<'de>,
    {
        serde_json::from_value(serde_json::to_value(m).unwrap()).unwrap()
    }

    #[test]
    fn process_event_json_inlines_the_oneof() {
        let ev = StartResponse {
            event: Some(ProcessEvent::data(Output::Stdout(b"hello\n".to_vec()))),
        };
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v, json!({"event": {"data": {"stdout": "aGVsbG8K"}}}));
        assert_eq!(json_round_trip(&ev), ev);

        let end = ProcessEvent::end(EndEvent {
            exit_code: -1,
            exited: false,
            status: "signal: killed".into(),
            error: None,
        });
        let v = serde_json::to_value(&end).unwrap();
        assert_eq!(
            v,
            json!({"end": {"exitCode": -1, "exited": false, "status": "signal: killed"}})
        );
        assert_eq!(json_round_trip(&end), end);
        assert_eq!(
            serde_json::to_value(ProcessEvent::keepalive()).unwrap(),
            json!({"keepalive": {}})
        );
    }

    #[test]
    fn start_request_parses_what_the_python_sdk_sends() {
        let req: StartRequest = serde_json::from_value(json!({
            "process": {"cmd": "/bin/bash", "args": ["-l", "-c", "echo hi"], "envs": {"A": "b"}},
            "stdin": false
        }))
        .unwrap();
        let p = req.process.unwrap();
        assert_eq!(p.cmd, "/bin/bash");
        assert_eq!(p.args, ["-l", "-c", "echo hi"]);
        assert_eq!(p.envs["A"], "b");
        assert_eq!(p.cwd, None);
        assert_eq!(req.stdin, Some(false));
        assert_eq!(req.pty, None);
    }

    #[test]
    fn selector_accepts_pid_as_number_or_string_and_refuses_both() {
        let a: ProcessSelector = serde_json::from_value(json!({"pid": 42})).unwrap();
        let b: ProcessSelector = serde_json::from_value(json!({"pid": "42"})).unwrap();
        assert_eq!(a, ProcessSelector::pid(42));
        assert_eq!(b, a);
        let t: ProcessSelector = serde_json::from_value(json!({"tag": "web"})).unwrap();
        assert_eq!(t, ProcessSelector::tag("web"));
        let err = serde_json::from_value::<ProcessSelector>(json!({"pid": 1, "tag": "x"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("both pid and tag"), "{err}");
    }

    #[test]
    fn signal_is_an_enum_name_or_number() {
        let r: SendSignalRequest = serde_json::from_value(json!({
            "process": {"pid": 7}, "signal": "SIGNAL_SIGKILL"
        }))
        .unwrap();
        assert_eq!(r.signal, Signal::Sigkill as i32);
        let r: SendSignalRequest = serde_json::from_value(json!({"signal": 15})).unwrap();
        assert_eq!(r.signal, Signal::Sigterm as i32);
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"signal": "SIGNAL_SIGTERM"})
        );
        assert!(serde_json::from_value::<SendSignalRequest>(json!({"signal": "SIGHUP"})).is_err());
    }

    #[test]
    fn input_bytes_accept_url_safe_and_unpadded_base64() {
        let i: ProcessInput = serde_json::from_value(json!({"stdin": "_-8"})).unwrap();
        assert_eq!(i.input, Some(process_input::Input::Stdin(vec![0xff, 0xef])));
        let i: ProcessInput = serde_json::from_value(json!({"pty": "aGk"})).unwrap();
        assert_eq!(i.input, Some(process_input::Input::Pty(b"hi".to_vec())));
        assert!(serde_json::from_value::<ProcessInput>(json!({"stdin": "!!"})).is_err());
    }

    #[test]
    fn binary_encoding_uses_upstream_field_numbers() {
        // ProcessEvent{end: EndEvent{exit_code: -1 (sint32 zigzag = 1), exited: true}}
        let ev = ProcessEvent::end(EndEvent {
            exit_code: -1,
            exited: true,
            status: String::new(),
            error: None,
        });
        let bytes = ev.encode_to_vec();
        assert_eq!(bytes, [0x1a, 0x04, 0x08, 0x01, 0x10, 0x01]);
        assert_eq!(ProcessEvent::decode(bytes.as_slice()).unwrap(), ev);

        // StartRequest{stdin: false} keeps the explicit false (field 4 present).
        let req = StartRequest {
            stdin: Some(false),
            ..Default::default()
        };
        assert_eq!(req.encode_to_vec(), [0x20, 0x00]);
        let sel = ProcessSelector::tag("a");
        assert_eq!(sel.encode_to_vec(), [0x12, 0x01, b'a']);
        match ProcessEvent::decode(&[0x0a, 0x02, 0x08, 0x05][..])
            .unwrap()
            .event
        {
            Some(Event::Start(s)) => assert_eq!(s.pid, 5),
            other => panic!("{other:?}"),
        }
    }
}
