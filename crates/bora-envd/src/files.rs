//! `GET /files` (download) and `POST /files` (upload), per E2B's
//! `spec/envd/envd.yaml`.
//!
//! - `?path=` names the file, relative to the home of `?username=` (default
//!   user otherwise); `?signature=` / `?signature_expiration=` stand in for
//!   the access token on pre-signed URLs (see [`crate::auth`]).
//! - Uploads are `multipart/form-data` with one or more `file` parts — each
//!   written to `?path=` (the first part) or to its part's file name, which
//!   the SDKs set to the destination path — or a raw
//!   `application/octet-stream` body (optionally `Content-Encoding: gzip`)
//!   written to `?path=`. Parent directories are created; files and
//!   directories created are owned by the user. `X-Metadata-<key>` headers
//!   replace the file's user metadata.
//! - The answer is the list of written entries `[{path, name, type}]`;
//!   errors are JSON `{"code": <status>, "message"}`.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyDataStream, BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::auth::{self, Operation};
use crate::connect::{Body, Code, RpcError, full};
use crate::fs::{self as efs, METADATA_PREFIX};
use crate::paths;
use crate::state::Shared;
use crate::users::User;

/// Longest metadata key: the xattr name limit (255) minus `user.e2b.`.
const MAX_METADATA_KEY: usize = 246;
/// Budget for all of a file's metadata (keys with prefix, plus values).
const MAX_METADATA_TOTAL: usize = 4096;

/// An error answer of the files API.
#[derive(Debug)]
pub struct FilesError {
    pub status: StatusCode,
    pub message: String,
}

impl FilesError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn into_response(self) -> Response<Body> {
        let body = serde_json::json!({ "code": self.status.as_u16(), "message": self.message });
        let mut resp = Response::new(full(body.to_string()));
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}

impl From<RpcError> for FilesError {
    fn from(e: RpcError) -> Self {
        let status = match e.code {
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::InvalidArgument | Code::AlreadyExists | Code::FailedPrecondition => {
                StatusCode::BAD_REQUEST
            }
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::ResourceExhausted => StatusCode::INSUFFICIENT_STORAGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.message)
    }
}

fn from_io(e: &io::Error, what: &Path) -> FilesError {
    if e.kind() == io::ErrorKind::StorageFull || e.kind() == io::ErrorKind::QuotaExceeded {
        return FilesError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("not enough disk space available for {}", what.display()),
        );
    }
    if e.kind() == io::ErrorKind::IsADirectory {
        return FilesError::bad_request(format!("path {} is a directory", what.display()));
    }
    RpcError::from_io(e, &what.display().to_string()).into()
}

/// The query parameters of `/files`.
#[derive(Debug, Default, PartialEq)]
pub struct FilesQuery {
    pub path: Option<String>,
    pub username: Option<String>,
    pub signature: Option<String>,
    pub signature_expiration: Option<i64>,
}

impl FilesQuery {
    pub fn parse(query: Option<&str>) -> Result<Self, FilesError> {
        let mut q = FilesQuery::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v)
                .ok_or_else(|| FilesError::bad_request(format!("invalid query parameter {k:?}")))?;
            match k {
                "path" => q.path = Some(v),
                "username" => q.username = Some(v).filter(|u| !u.is_empty()),
                "signature" => q.signature = Some(v),
                "signature_expiration" => {
                    q.signature_expiration = Some(v.parse().map_err(|_| {
                        FilesError::bad_request(format!(
                            "signature_expiration {v:?} is not a number"
                        ))
                    })?)
                }
                _ => {}
            }
        }
        Ok(q)
    }
}

/// Decodes `%XX` escapes and `+` (space) in a query value.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let result = async {
        let query = FilesQuery::parse(req.uri().query())?;
        let op = match *req.method() {
            Method::GET | Method::HEAD => Operation::Read,
            Method::POST | Method::PUT => Operation::Write,
            _ => {
                return Err(FilesError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!(
                        "{} /files: use GET to download or POST to upload",
                        req.method()
                    ),
                ));
            }
        };
        authorize(&shared, req.headers(), &query, op)?;
        let user = shared
            .user(query.username.as_deref())
            .map_err(|e| FilesError::new(StatusCode::UNAUTHORIZED, e.message))?;
        match op {
            Operation::Read => download(&user, &query).await,
            Operation::Write => upload(&user, &query, req).await,
        }
    }
    .await;
    result.unwrap_or_else(FilesError::into_response)
}

/// The token, or else a valid signature for this path and operation.
fn authorize(
    shared: &Shared,
    headers: &HeaderMap,
    query: &FilesQuery,
    op: Operation,
) -> Result<(), FilesError> {
    let settings = shared.settings();
    let Some(token) = settings.access_token.as_deref() else {
        return Ok(());
    };
    if auth::has_token(Some(token), headers) {
        return Ok(());
    }
    let unauthorized = |m: String| FilesError::new(StatusCode::UNAUTHORIZED, m);
    let Some(signature) = &query.signature else {
        return Err(unauthorized(
            "missing or invalid access token: send X-Access-Token or a signed URL".into(),
        ));
    };
    auth::verify_signature(
        token,
        query.path.as_deref().unwrap_or(""),
        op,
        query.username.as_deref().unwrap_or(""),
        signature,
        query.signature_expiration,
        chrono::Utc::now().timestamp(),
    )
    .map_err(|e| {
        unauthorized(format!(
            "{e} for path {:?}",
            query.path.as_deref().unwrap_or("")
        ))
    })
}

async fn download(user: &User, query: &FilesQuery) -> Result<Response<Body>, FilesError> {
    let path = paths::resolve(query.path.as_deref().unwrap_or(""), &user.home)?;
    let meta = efs::check_readable_file(&path)?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| from_io(&e, &path))?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024).map_ok(Frame::data);
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().replace(['"', '\\', '\r', '\n'], "_"))
        .unwrap_or_default();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.len()));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// One written file, as the upload answer lists it.
#[derive(Debug, Serialize)]
struct WrittenEntry {
    path: String,
    name: String,
    r#type: &'static str,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    metadata: HashMap<String, String>,
}

async fn upload(
    user: &User,
    query: &FilesQuery,
    req: Request<Incoming>,
) -> Result<Response<Body>, FilesError> {
    let metadata = metadata_headers(req.headers())?;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let gzip = match req
        .headers()
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        None | Some("identity") | Some("") => false,
        Some("gzip") => true,
        Some(other) => {
            return Err(FilesError::bad_request(format!(
                "unsupported Content-Encoding {other:?}: use gzip or identity"
            )));
        }
    };
    let mut written = Vec::new();
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media == "multipart/form-data" {
        if gzip {
            return Err(FilesError::bad_request(
                "Content-Encoding gzip is only supported for application/octet-stream uploads",
            ));
        }
        let boundary = multer::parse_boundary(&content_type)
            .map_err(|e| FilesError::bad_request(format!("invalid multipart upload: {e}")))?;
        let body = BodyDataStream::new(req.into_body());
        let mut multipart = multer::Multipart::new(body, boundary);
        let mut path_param = query.path.clone();
        while let Some(field) = multipart
            .next_field()
            .await
            .map_err(|e| FilesError::bad_request(format!("invalid multipart upload: {e}")))?
        {
            if field.name() != Some("file") {
                continue;
            }
            let target = path_param
                .take()
                .filter(|p| !p.is_empty())
                .or_else(|| field.file_name().map(str::to_string))
                .filter(|p| !p.is_empty())
                .ok_or_else(|| {
                    FilesError::bad_request("upload part has no file name and no ?path= was given")
                })?;
            let path = paths::resolve(&target, &user.home)?;
            let field = field.map_err(|e| io::Error::other(format!("reading the upload: {e}")));
            written.push(write_file(path, user, false, &metadata, field).await?);
        }
        if written.is_empty() {
            return Err(FilesError::bad_request(
                "multipart upload has no part named \"file\"",
            ));
        }
    } else {
        let target = query
            .path
            .clone()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                FilesError::bad_request("?path= is required for application/octet-stream uploads")
            })?;
        let path = paths::resolve(&target, &user.home)?;
        let body = BodyDataStream::new(req.into_body())
            .map_err(|e| io::Error::other(format!("reading the upload: {e}")));
        written.push(write_file(path, user, gzip, &metadata, body).await?);
    }
    let mut resp = Response::new(full(serde_json::to_vec(&written).unwrap_or_default()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// `X-Metadata-<key>: <value>` headers, validated per the spec.
fn metadata_headers(headers: &HeaderMap) -> Result<HashMap<String, String>, FilesError> {
    let mut out = HashMap::new();
    let mut total = 0;
    for name in headers.keys() {
        let Some(key) = name.as_str().strip_prefix("x-metadata-") else {
            continue;
        };
        let value = headers
            .get(name)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        let printable = |b: &[u8]| b.iter().all(|c| (0x20..=0x7e).contains(c));
        if key.is_empty() || !printable(key.as_bytes()) || !printable(value) {
            return Err(FilesError::bad_request(format!(
                "metadata header {name}: keys and values must be printable ASCII"
            )));
        }
        if key.len() > MAX_METADATA_KEY {
            return Err(FilesError::bad_request(format!(
                "metadata key {key:?} is longer than {MAX_METADATA_KEY} bytes"
            )));
        }
        total += METADATA_PREFIX.len() + key.len() + value.len();
        out.insert(key.to_string(), String::from_utf8_lossy(value).into_owned());
    }
    if total > MAX_METADATA_TOTAL {
        return Err(FilesError::bad_request(format!(
            "metadata totals {total} bytes, more than the {MAX_METADATA_TOTAL} allowed per file"
        )));
    }
    Ok(out)
}

/// Streams `body` into `path` from a blocking thread (decompressing if
/// asked), then hands the file to `user` and sets its metadata.
async fn write_file<S>(
    path: PathBuf,
    user: &User,
    gzip: bool,
    metadata: &HashMap<String, String>,
    mut body: S,
) -> Result<WrittenEntry, FilesError>
where
    S: Stream<Item = Result<Bytes, io::Error>> + Unpin,
{
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let writer = {
        let path = path.clone();
        let user = user.clone();
        let metadata = metadata.clone();
        tokio::task::spawn_blocking(move || write_blocking(&path, &user, gzip, &metadata, rx))
    };
    let mut read_error = None;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => {
                if tx.send(chunk).await.is_err() {
                    break; // the writer failed; its error says why
                }
            }
            Err(e) => {
                read_error = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let written = writer.await.map_err(|e| {
        FilesError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("upload task failed: {e}"),
        )
    })?;
    written?;
    if let Some(e) = read_error {
        return Err(FilesError::bad_request(format!(
            "upload of {} was cut short: {e}",
            path.display()
        )));
    }
    Ok(WrittenEntry {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        path: path.display().to_string(),
        r#type: "file",
        metadata: metadata.clone(),
    })
}

fn write_blocking(
    path: &Path,
    user: &User,
    gzip: bool,
    metadata: &HashMap<String, String>,
    rx: mpsc::Receiver<Bytes>,
) -> Result<(), FilesError> {
    if path.is_dir() {
        return Err(FilesError::bad_request(format!(
            "path {} is a directory",
            path.display()
        )));
    }
    let parent = efs::parent_of(path);
    efs::create_dirs_owned(&parent, user).map_err(|e| from_io(&e, &parent))?;
    let mut file = std::fs::File::create(path).map_err(|e| from_io(&e, path))?;
    let mut reader = ChannelReader {
        rx,
        current: Bytes::new(),
    };
    let copied = if gzip {
        io::copy(&mut flate2::read::GzDecoder::new(reader), &mut file)
    } else {
        io::copy(&mut reader, &mut file)
    };
    copied
        .and_then(|_| file.flush())
        .map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData
            | io::ErrorKind::InvalidInput
            | io::ErrorKind::UnexpectedEof
                if gzip =>
            {
                FilesError::bad_request(format!("invalid gzip upload for {}: {e}", path.display()))
            }
            _ => from_io(&e, path),
        })?;
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
        .map_err(|e| from_io(&e, path))?;
    if let Err(e) = efs::replace_metadata(path, metadata) {
        // A filesystem without user xattrs only matters if there is
        // metadata to keep.
        if !metadata.is_empty() {
            return Err(FilesError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("storing metadata on {}: {e}", path.display()),
            ));
        }
    }
    Ok(())
}

/// Blocking `Read` over the chunks the async side receives.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.current = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing_decodes_values() {
        let q = FilesQuery::parse(Some(
            "path=%2Fhome%2Fuser%2Fmy+file.txt&username=root&signature=v1_a%2Bb&signature_expiration=12",
        ))
        .unwrap();
        assert_eq!(
            q,
            FilesQuery {
                path: Some("/home/user/my file.txt".into()),
                username: Some("root".into()),
                signature: Some("v1_a+b".into()),
                signature_expiration: Some(12),
            }
        );
        assert!(FilesQuery::parse(Some("path=%zz")).is_err());
        assert!(FilesQuery::parse(Some("signature_expiration=soon")).is_err());
        assert_eq!(FilesQuery::parse(None).unwrap(), FilesQuery::default());
        assert_eq!(percent_decode("%E2%9C%93").as_deref(), Some("✓"));
    }

    #[test]
    fn metadata_headers_are_validated() {
        let mut h = HeaderMap::new();
        h.insert("x-metadata-Owner", HeaderValue::from_static("alice"));
        h.insert("x-other", HeaderValue::from_static("ignored"));
        assert_eq!(
            metadata_headers(&h).unwrap(),
            HashMap::from([("owner".to_string(), "alice".to_string())])
        );
        h.insert(
            "x-metadata-bad",
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        assert_eq!(metadata_headers(&h).unwrap_err().status, 400);
        let mut h = HeaderMap::new();
        h.insert(
            "x-metadata-big",
            HeaderValue::from_str(&"v".repeat(5000)).unwrap(),
        );
        assert_eq!(metadata_headers(&h).unwrap_err().status, 400);
    }

    #[test]
    fn channel_reader_reassembles_chunks() {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Bytes::from_static(b"hel")).unwrap();
        tx.try_send(Bytes::new()).unwrap();
        tx.try_send(Bytes::from_static(b"lo")).unwrap();
        drop(tx);
        let mut s = String::new();
        ChannelReader {
            rx,
            current: Bytes::new(),
        }
        .read_to_string(&mut s)
        .unwrap();
        assert_eq!(s, "hello");
    }
}
