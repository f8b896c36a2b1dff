//! Platforms (`os/architecture[/variant]`) and how an image index entry is matched to one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An OS and CPU architecture, spelled as in OCI image indexes (Go's `GOOS`/`GOARCH`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    /// `linux`, `windows`, ...
    pub os: String,
    /// `amd64`, `arm64`, `arm`, `riscv64`, ...
    pub architecture: String,
    /// `v8` for arm64, `v7` for arm, ... `None` matches any variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// A platform without variant.
    pub fn new(os: impl Into<String>, architecture: impl Into<String>) -> Self {
        Platform {
            os: os.into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    /// Linux on the CPU architecture this program was built for.
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "x86" => "386",
            "aarch64" => "arm64",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "powerpc64" => "ppc64",
            "loongarch64" => "loong64",
            other => other, // arm, riscv64, s390x, mips64 are spelled the same.
        };
        Platform::new("linux", architecture)
    }

    /// Whether an index entry for `candidate` can run on this platform.
    ///
    /// OS and architecture must be equal; a variant, when asked for, must be equal too
    /// (an `arm64` entry without variant counts as `v8`). Without a variant any variant matches.
    pub fn matches(&self, candidate: &Platform) -> bool {
        if self.os != candidate.os || self.architecture != candidate.architecture {
            return false;
        }
        match (&self.variant, &candidate.variant) {
            (None, _) => true,
            (Some(wanted), Some(found)) => wanted == found,
            (Some(wanted), None) => self.architecture == "arm64" && wanted == "v8",
        }
    }
}

impl Default for Platform {
    /// [`Platform::host`].
    fn default() -> Self {
        Platform::host()
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// Error returned when a platform string is not `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid platform {0:?}: expected `os/arch` or `os/arch/variant`, e.g. `linux/arm64`")]
pub struct InvalidPlatform(pub String);

impl FromStr for Platform {
    type Err = InvalidPlatform;

    /// Parse `os/arch` or `os/arch/variant`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let valid = |p: &&str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(valid) {
            return Err(InvalidPlatform(s.to_string()));
        }
        Ok(Platform {
            os: parts[0].to_string(),
            architecture: parts[1].to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }
}

impl From<&oci_spec::image::Platform> for Platform {
    fn from(p: &oci_spec::image::Platform) -> Self {
        Platform {
            os: p.os().to_string(),
            architecture: p.architecture().to_string(),
            variant: p.variant().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        let p: Platform = "linux/arm/v7".parse().unwrap();
        assert_eq!(p.variant.as_deref(), Some("v7"));
        assert_eq!(p.to_string(), "linux/arm/v7");
        assert_eq!(
            "linux/amd64".parse::<Platform>().unwrap(),
            Platform::new("linux", "amd64")
        );
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux//v7".parse::<Platform>().is_err());
        assert!("a/b/c/d".parse::<Platform>().is_err());
    }

    #[test]
    fn host_is_linux() {
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        assert!(!host.architecture.is_empty());
        assert_ne!(host.architecture, "x86_64");
    }

    #[test]
    fn matching() {
        let amd64 = Platform::new("linux", "amd64");
        assert!(amd64.matches(&Platform::new("linux", "amd64")));
        assert!(!amd64.matches(&Platform::new("linux", "arm64")));
        assert!(!amd64.matches(&Platform::new("windows", "amd64")));

        let arm64_v8: Platform = "linux/arm64/v8".parse().unwrap();
        assert!(arm64_v8.matches(&Platform::new("linux", "arm64")));
        assert!(Platform::new("linux", "arm64").matches(&arm64_v8));

        let arm_v7: Platform = "linux/arm/v7".parse().unwrap();
        let arm_v6: Platform = "linux/arm/v6".parse().unwrap();
        assert!(!arm_v7.matches(&arm_v6));
        assert!(!arm_v7.matches(&Platform::new("linux", "arm")));
    }
}
