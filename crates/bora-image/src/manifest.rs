//! Manifests, indexes and configs: media types, parsing, and platform selection.
//!
//! OCI and Docker v2 (schema 2) documents have the same JSON shape, so both are parsed
//! with `oci-spec`'s types; media types decide what a document is.

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use serde::Deserialize;

use crate::{ImageError, Platform};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (multi-platform).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// The `Accept` header for manifest requests: everything this crate understands.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// The largest manifest or index accepted (they are small JSON documents).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// The largest image config accepted.
pub const MAX_CONFIG_BYTES: u64 = 32 << 20;
/// How deep indexes may nest (index → index → manifest).
pub const MAX_INDEX_DEPTH: usize = 4;

/// The annotation a layout's `index.json` uses to name (tag) its entries.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// A parsed manifest document.
#[derive(Debug)]
pub enum Document {
    /// A platform-specific image manifest.
    Manifest(Box<ImageManifest>),
    /// An index (manifest list) of per-platform manifests.
    Index(Box<ImageIndex>),
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (RFC 1952).
    Gzip,
    /// Zstandard.
    Zstd,
}

/// Just the `mediaType` field, to classify a document before parsing it fully.
#[derive(Deserialize)]
struct MediaTypeProbe {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<serde_json::Value>,
    layers: Option<serde_json::Value>,
}

/// `"application/x; charset=utf-8"` → `"application/x"`.
pub fn bare_media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// Parse a manifest or index. `declared` is the media type the source announced (HTTP
/// `Content-Type` or the descriptor that pointed here); the document's own `mediaType`
/// field, then its shape, are used when that is missing or generic.
pub fn parse_manifest(
    bytes: &[u8],
    declared: Option<&str>,
    reference: &str,
    what: &str,
) -> Result<Document, ImageError> {
    let invalid = |reason: String| ImageError::InvalidManifest {
        reference: reference.to_string(),
        what: what.to_string(),
        reason,
    };
    let probe: MediaTypeProbe =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
    let declared = declared
        .map(bare_media_type)
        .filter(|m| !m.is_empty() && *m != "application/json" && *m != "text/plain");
    let media_type = match (declared, probe.media_type.as_deref()) {
        (Some(m), _) | (None, Some(m)) => m.to_string(),
        (None, None) if probe.manifests.is_some() => OCI_INDEX.to_string(),
        (None, None) if probe.layers.is_some() => OCI_MANIFEST.to_string(),
        (None, None) => return Err(invalid("it has no mediaType, manifests or layers".into())),
    };
    match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let manifest: ImageManifest =
                serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
            Ok(Document::Manifest(Box::new(manifest)))
        }
        OCI_INDEX | DOCKER_MANIFEST_LIST => {
            let index: ImageIndex =
                serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
            Ok(Document::Index(Box::new(index)))
        }
        m if m.starts_with("application/vnd.docker.distribution.manifest.v1") => {
            Err(ImageError::UnsupportedMediaType {
                media_type: m.to_string(),
                what: format!("{what} of {reference}"),
                hint: "docker schema 1 manifests are obsolete: push the image again with a current docker, buildah or skopeo".into(),
            })
        }
        m => Err(ImageError::UnsupportedMediaType {
            media_type: m.to_string(),
            what: format!("{what} of {reference}"),
            hint: "this is not a container image manifest (an artifact?)".into(),
        }),
    }
}

/// Pick the manifest for `wanted` from an index.
///
/// Entries without platform, and `unknown/unknown` ones (build attestations), never match.
/// When several match, the first wins (indexes list the preferred variant first).
pub fn select_platform<'a>(
    manifests: &'a [Descriptor],
    wanted: &Platform,
    reference: &str,
) -> Result<&'a Descriptor, ImageError> {
    let mut available: Vec<String> = Vec::new();
    for descriptor in manifests {
        let Some(platform) = descriptor.platform() else {
            continue;
        };
        let platform = Platform::from(platform);
        if platform.os == "unknown" && platform.architecture == "unknown" {
            continue;
        }
        if wanted.matches(&platform) {
            return Ok(descriptor);
        }
        let name = platform.to_string();
        if !available.contains(&name) {
            available.push(name);
        }
    }
    available.sort();
    Err(ImageError::NoMatchingPlatform {
        reference: reference.to_string(),
        wanted: wanted.to_string(),
        available,
    })
}

/// The compression of a layer media type, or `None` if layers of this type cannot be unpacked.
pub fn layer_compression(media_type: &str) -> Option<Compression> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

/// Check that a manifest describes a runnable container image whose layers can all be
/// unpacked, before anything is downloaded.
pub fn check_manifest(manifest: &ImageManifest, reference: &str) -> Result<(), ImageError> {
    let config_type = manifest.config().media_type().to_string();
    if config_type != OCI_CONFIG && config_type != DOCKER_CONFIG {
        return Err(ImageError::UnsupportedMediaType {
            media_type: config_type,
            what: format!("the config of {reference}"),
            hint: "this is not a container image (an artifact such as a helm chart or signature?)"
                .into(),
        });
    }
    for layer in manifest.layers() {
        let media_type = layer.media_type().to_string();
        if layer_compression(&media_type).is_none() {
            return Err(ImageError::UnsupportedMediaType {
                hint: if media_type.contains("encrypted") {
                    "encrypted layers are not supported: push an unencrypted image".into()
                } else {
                    "layers must be tar, tar+gzip or tar+zstd".into()
                },
                media_type,
                what: format!("layer {} of {reference}", layer.digest()),
            });
        }
    }
    Ok(())
}

/// Parse an image config and check it against its manifest (one diff_id per layer) and,
/// if given, the platform that was asked for.
pub fn parse_config(
    bytes: &[u8],
    layer_count: usize,
    wanted: Option<&Platform>,
    reference: &str,
) -> Result<ImageConfiguration, ImageError> {
    let invalid = |reason: String| ImageError::InvalidManifest {
        reference: reference.to_string(),
        what: "image config".into(),
        reason,
    };
    let config: ImageConfiguration =
        serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != layer_count {
        return Err(invalid(format!(
            "the manifest has {layer_count} layers but the config lists {} diff_ids",
            diff_ids.len()
        )));
    }
    for diff_id in diff_ids {
        crate::blob::validate_digest(diff_id, "image config diff_id", reference)?;
    }
    let found = Platform::new(config.os().to_string(), config.architecture().to_string());
    let os_arch_known = !found.os.is_empty() && !found.architecture.is_empty();
    if let Some(wanted) = wanted
        && os_arch_known
        && (found.os != wanted.os || found.architecture != wanted.architecture)
    {
        return Err(ImageError::NoMatchingPlatform {
            reference: reference.to_string(),
            wanted: wanted.to_string(),
            available: vec![found.to_string()],
        });
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const HEX_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn index_json() -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST_LIST}","manifests":[
              {{"mediaType":"{DOCKER_MANIFEST}","digest":"sha256:{HEX_A}","size":10,"platform":{{"os":"linux","architecture":"arm","variant":"v7"}}}},
              {{"mediaType":"{DOCKER_MANIFEST}","digest":"sha256:{HEX_B}","size":10,"platform":{{"os":"linux","architecture":"amd64"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"sha256:{HEX_B}","size":10,"platform":{{"os":"unknown","architecture":"unknown"}}}}
            ]}}"#
        )
    }

    #[test]
    fn parses_docker_manifest_list_and_selects_platform() {
        let doc = parse_manifest(index_json().as_bytes(), None, "r", "manifest").unwrap();
        let Document::Index(index) = doc else {
            panic!("expected an index")
        };
        let amd64 =
            select_platform(index.manifests(), &Platform::new("linux", "amd64"), "r").unwrap();
        assert_eq!(amd64.digest().to_string(), format!("sha256:{HEX_B}"));
        let arm =
            select_platform(index.manifests(), &"linux/arm/v7".parse().unwrap(), "r").unwrap();
        assert_eq!(arm.digest().to_string(), format!("sha256:{HEX_A}"));

        let err =
            select_platform(index.manifests(), &Platform::new("linux", "s390x"), "r").unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, ImageError::NoMatchingPlatform { .. }));
        assert!(message.contains("linux/s390x"), "{message}");
        assert!(
            message.contains("available: linux/amd64, linux/arm/v7"),
            "{message}"
        );
        assert!(!message.contains("unknown"), "{message}");
    }

    #[test]
    fn classifies_by_declared_type_field_or_shape() {
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","digest":"sha256:{HEX_A}","size":2}},"layers":[]}}"#
        );
        for declared in [
            Some(OCI_MANIFEST),
            Some("application/json; charset=utf-8"),
            None,
        ] {
            let doc = parse_manifest(manifest.as_bytes(), declared, "r", "manifest").unwrap();
            assert!(matches!(doc, Document::Manifest(_)));
        }
        let err = parse_manifest(
            manifest.as_bytes(),
            Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
            "r",
            "manifest",
        )
        .unwrap_err();
        assert!(err.to_string().contains("schema 1"), "{err}");
        let err = parse_manifest(b"{not json", None, "r", "manifest").unwrap_err();
        assert!(matches!(err, ImageError::InvalidManifest { .. }), "{err}");
    }

    #[test]
    fn layer_media_types() {
        assert_eq!(
            layer_compression("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar+zstd"),
            Some(Compression::Zstd)
        );
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar"),
            Some(Compression::None)
        );
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar+gzip+encrypted"),
            None
        );
    }

    #[test]
    fn config_must_match_layers_and_platform() {
        let config = |arch: &str, diff_ids: &str| {
            format!(
                r#"{{"architecture":"{arch}","os":"linux","rootfs":{{"type":"layers","diff_ids":[{diff_ids}]}}}}"#
            )
        };
        let one = format!(r#""sha256:{HEX_A}""#);
        let amd64 = Platform::new("linux", "amd64");
        parse_config(config("amd64", &one).as_bytes(), 1, Some(&amd64), "r").unwrap();
        let err = parse_config(config("amd64", &one).as_bytes(), 2, Some(&amd64), "r").unwrap_err();
        assert!(
            err.to_string().contains("2 layers but the config lists 1"),
            "{err}"
        );
        let err = parse_config(config("arm64", &one).as_bytes(), 1, Some(&amd64), "r").unwrap_err();
        assert!(
            matches!(err, ImageError::NoMatchingPlatform { .. }),
            "{err}"
        );
        let err = parse_config(
            config("amd64", r#""sha256:../x""#).as_bytes(),
            1,
            Some(&amd64),
            "r",
        )
        .unwrap_err();
        assert!(matches!(err, ImageError::InvalidManifest { .. }), "{err}");
    }

    proptest::proptest! {
        /// Untrusted manifests never make the parser panic.
        #[test]
        fn parsing_arbitrary_documents_never_panics(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            declared in proptest::option::of("[a-z/.+-]{0,40}"),
        ) {
            let _ = parse_manifest(&bytes, declared.as_deref(), "r", "manifest");
            let _ = parse_config(&bytes, 1, None, "r");
        }

        /// Near-valid JSON (a real index with one byte changed) never panics either.
        #[test]
        fn parsing_mutated_indexes_never_panics(position in 0usize..2000, value in proptest::num::u8::ANY) {
            let mut bytes = index_json().into_bytes();
            let len = bytes.len();
            bytes[position % len] = value;
            if let Ok(Document::Index(index)) = parse_manifest(&bytes, None, "r", "manifest") {
                let _ = select_platform(index.manifests(), &Platform::host(), "r");
            }
        }
    }
}
