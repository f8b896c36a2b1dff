//! `bora templates build-base`: builds the default sandbox template, `base`.
//!
//! Sandboxes run from templates, and templates are OCI images. The base template is a
//! minimal Debian with `bash`, coreutils, `python3` (with `pip`), `ca-certificates` and
//! `procps`, a user `user` (uid and gid 1000, home `/home/user`, shell `/bin/bash`) besides
//! root, and no `sudo`. It is built from Debian packages only, with
//! [`mmdebstrap`](https://gitlab.mister-muffin.de/josch/mmdebstrap) (`apt install
//! mmdebstrap`), and imported into the node's image store as the local image
//! `bora.local/templates/base` (see [`bora_image::LOCAL_REGISTRY`]):
//!
//! ```text
//! bora templates build-base [--data-dir DIR] [--suite bookworm] [--mirror URL]
//!                           [--security-mirror URL|none] [--rebuild]
//! ```
//!
//! It prints progress on stderr and the pinned reference
//! (`bora.local/templates/base@sha256:…`) on stdout.
//!
//! # Cache
//!
//! The root filesystem tarball and the image's pinned reference are kept in
//! `<data-dir>/templates/base/<key>/` (`rootfs.tar`, `inputs`, `image`), where `<key>`
//! hashes the inputs: suite, mirrors, package list, `SOURCE_DATE_EPOCH` and
//! [`FORMAT_VERSION`] (bumped whenever the recipe below changes). A run whose inputs match
//! a finished build uses it and returns at once; if only the image store lost the image,
//! the kept tarball is imported again (seconds, no network). `--rebuild` builds anew.
//! The cache is keyed by inputs, not by what the mirror serves today: `--rebuild` picks up
//! Debian's updates.
//!
//! # Reproducibility
//!
//! mmdebstrap honours `SOURCE_DATE_EPOCH`: with it set, runs with the same options and the
//! same mirror content give the same tarball (it clamps mtimes and removes logs and
//! caches). This command always sets it — to the caller's `SOURCE_DATE_EPOCH` if set, else
//! to [`DEFAULT_SOURCE_DATE_EPOCH`] — writes `/etc/hostname` and `/etc/resolv.conf` with
//! fixed content (the node bind-mounts its own over them anyway) and creates the user
//! without tools that stamp today's date, so the same inputs and mirror content give the
//! same image digest. The image import itself is deterministic.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use bora_image::{ImageConfig, ImageStore, ImportConfig};
use clap::{Args, Subcommand};

/// The base template's local image name (`bora.local/templates/base`).
pub const BASE_NAME: &str = "templates/base";
/// The version of the recipe (hooks, options, image config): part of the cache key.
pub const FORMAT_VERSION: u32 = 2;
/// The `SOURCE_DATE_EPOCH` used when the environment sets none (2024-01-01T00:00:00Z).
pub const DEFAULT_SOURCE_DATE_EPOCH: u64 = 1_704_067_200;
/// What is installed besides Debian's `Essential: yes` packages and apt (`--variant=minbase`).
///
/// `python3-pip` (with setuptools and wheel, about 11 MB of the ~165 MB) is included because
/// agents expect `pip install` to work in a sandbox.
pub const PACKAGES: &[&str] = &[
    "bash",
    "coreutils",
    "python3",
    "python3-pip",
    "ca-certificates",
    "procps",
];
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
const DEFAULT_SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";
/// mmdebstrap's hook that sets up merged-/usr itself, which keeps the `usrmerge` package
/// (and the ~45 MB of Perl it needs) out of the image.
const MERGED_USR_HOOKS: &str = "/usr/share/mmdebstrap/hooks/maybe-merged-usr";

/// The customize hook (`$1` is the root filesystem, run with `SOURCE_DATE_EPOCH` set): the
/// user `user`, written directly so that nothing stamps the build date; fixed hostname and
/// resolv.conf; pip allowed outside a virtualenv (a sandbox is disposable); a login shell
/// that forks nothing; apt caches gone.
const CUSTOMIZE_HOOK: &str = r#"set -eu
root="$1"
if grep -q '^user:' "$root/etc/passwd" || grep -q '^[^:]*:[^:]*:1000:' "$root/etc/passwd"; then
  echo "a user named user or with uid 1000 already exists" >&2; exit 1
fi
echo 'user:x:1000:1000::/home/user:/bin/bash' >> "$root/etc/passwd"
echo 'user:x:1000:' >> "$root/etc/group"
echo "user:*:$((SOURCE_DATE_EPOCH / 86400)):0:99999:7:::" >> "$root/etc/shadow"
if [ -e "$root/etc/gshadow" ]; then echo 'user:!::' >> "$root/etc/gshadow"; fi
mkdir -p "$root/home/user"
cp -a "$root/etc/skel/." "$root/home/user/"
chown -R 1000:1000 "$root/home/user"
chmod 0755 "$root/home/user"
echo sandbox > "$root/etc/hostname"
: > "$root/etc/resolv.conf"
chmod 0644 "$root/etc/hostname" "$root/etc/resolv.conf"
rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
# The SDKs run every command under `bash -l`: let /etc/profile take the uid from bash
# rather than fork id(1) (a fork and exec costs ~20 ms under gVisor); sh still runs id.
sed -i 's/"$(id -u)"/"${EUID:-$(id -u)}"/g' "$root/etc/profile"
grep -q 'EUID:-' "$root/etc/profile"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
"#;

/// `bora templates …`
#[derive(Subcommand)]
pub enum TemplatesCommand {
    /// Build the default sandbox template `base` (Debian with bash, coreutils, python3 and a
    /// user `user`) with mmdebstrap and import it into this node's image store; cached.
    BuildBase(BuildBaseArgs),
}

#[derive(Args)]
pub struct BuildBaseArgs {
    /// The Debian suite (release) to build from.
    #[arg(long, default_value = "bookworm")]
    suite: String,
    /// The Debian mirror (its `SUITE` and `SUITE-updates` are used).
    #[arg(long, default_value = DEFAULT_MIRROR, value_name = "URL")]
    mirror: String,
    /// The Debian security mirror (its `SUITE-security` is used), or `none`.
    #[arg(long, default_value = DEFAULT_SECURITY_MIRROR, value_name = "URL")]
    security_mirror: String,
    /// Build again even if a build with the same inputs is cached.
    #[arg(long)]
    rebuild: bool,
}

/// Run a `bora templates` command against the data directory `data_dir`.
pub fn main(data_dir: &Path, command: TemplatesCommand) -> ExitCode {
    let result = match command {
        TemplatesCommand::BuildBase(args) => super::runtime()
            .block_on(build_base(data_dir, &args))
            .map(|_| ()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The inputs of a build, in a canonical text form that is stored next to it.
struct Inputs {
    suite: String,
    sources: Vec<String>,
    source_date_epoch: u64,
}

impl Inputs {
    fn new(args: &BuildBaseArgs) -> anyhow::Result<Self> {
        let suite = &args.suite;
        if suite.is_empty()
            || !suite
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            bail!("invalid --suite {suite:?}: expected a Debian suite such as bookworm or trixie");
        }
        let check_url = |flag: &str, url: &str| -> anyhow::Result<String> {
            let ok = ["http://", "https://", "file:/"]
                .iter()
                .any(|p| url.starts_with(p))
                && !url.chars().any(|c| c.is_whitespace() || c.is_control());
            if !ok {
                bail!("invalid {flag} {url:?}: expected a URL such as {DEFAULT_MIRROR}");
            }
            Ok(url.trim_end_matches('/').to_string())
        };
        let mirror = check_url("--mirror", &args.mirror)?;
        let mut sources = vec![format!("deb {mirror} {suite} main")];
        // Unstable and experimental have no updates or security suites.
        let stable_like = !matches!(
            suite.as_str(),
            "sid" | "unstable" | "experimental" | "rc-buggy"
        );
        if stable_like {
            sources.push(format!("deb {mirror} {suite}-updates main"));
            if args.security_mirror != "none" {
                let security = check_url("--security-mirror", &args.security_mirror)?;
                sources.push(format!("deb {security} {suite}-security main"));
            }
        }
        let source_date_epoch = match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(value) => value.trim().parse().with_context(|| {
                format!("SOURCE_DATE_EPOCH={value:?} is not a number of seconds since 1970")
            })?,
            Err(_) => DEFAULT_SOURCE_DATE_EPOCH,
        };
        Ok(Inputs {
            suite: suite.clone(),
            sources,
            source_date_epoch,
        })
    }

    fn describe(&self) -> String {
        format!(
            "format {FORMAT_VERSION}\nsuite {}\n{}\npackages {}\nsource-date-epoch {}\n",
            self.suite,
            self.sources
                .iter()
                .map(|s| format!("source {s}"))
                .collect::<Vec<_>>()
                .join("\n"),
            PACKAGES.join(" "),
            self.source_date_epoch,
        )
    }

    /// The cache directory's name: the suite and a hash of everything.
    fn key(&self) -> String {
        format!("{}-{:016x}", self.suite, fnv1a(self.describe().as_bytes()))
    }
}

/// FNV-1a, 64 bits: stable across Rust versions (unlike `DefaultHasher`). Collisions only
/// cost a rebuild, since the inputs are stored and compared too.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Build (or find cached) the base template and return its pinned reference.
pub async fn build_base(data_dir: &Path, args: &BuildBaseArgs) -> anyhow::Result<String> {
    let started = Instant::now();
    if !nix::unistd::geteuid().is_root() {
        bail!("building a template needs root (the image store keeps file owners): run it as root");
    }
    let inputs = Inputs::new(args)?;
    let base_dir = data_dir.join("templates/base");
    let dir = base_dir.join(inputs.key());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _lock = lock(&base_dir.join(".lock"))?;
    let store = ImageStore::open(data_dir.join("images"))
        .with_context(|| format!("opening the image store in {}", data_dir.display()))?;
    let tarball = dir.join("rootfs.tar");
    let inputs_file = dir.join("inputs");
    let image_file = dir.join("image");
    let description = inputs.describe();
    let cached_inputs = std::fs::read_to_string(&inputs_file).ok();
    let cached = !args.rebuild && cached_inputs.as_deref() == Some(description.as_str());

    if cached && let Ok(pinned) = std::fs::read_to_string(&image_file) {
        let pinned = pinned.trim();
        let current = store.local_image(BASE_NAME).ok();
        if let Some(current) = current.filter(|image| image.pinned == pinned) {
            eprintln!(
                "bora: using the cached base template ({}, built {}; --rebuild to build it again)",
                inputs.suite,
                modified_ago(&image_file)
            );
            println!("{}", current.pinned);
            return Ok(current.pinned);
        }
    }

    if cached && tarball.is_file() {
        eprintln!(
            "bora: importing the cached root filesystem {}",
            tarball.display()
        );
    } else {
        let _ = std::fs::remove_file(&image_file);
        let _ = std::fs::remove_file(&inputs_file);
        eprintln!(
            "bora: building the base template from Debian {} ({}) with mmdebstrap; this takes a minute or two",
            inputs.suite,
            inputs.sources.join(", ")
        );
        run_mmdebstrap(&inputs, args, &tarball)?;
        std::fs::write(&inputs_file, &description)
            .with_context(|| format!("writing {}", inputs_file.display()))?;
    }

    let size = std::fs::metadata(&tarball).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "bora: importing the root filesystem ({}) as {}/{BASE_NAME}",
        human_size(size),
        bora_image::LOCAL_REGISTRY
    );
    let config = ImportConfig {
        config: ImageConfig {
            cmd: vec!["/bin/bash".into()],
            env: vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                "LANG=C.UTF-8".into(),
            ],
            working_dir: Some("/home/user".into()),
            labels: [
                ("org.opencontainers.image.title", "bora base template"),
                ("dev.bora.template", "base"),
                ("dev.bora.template.suite", inputs.suite.as_str()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            ..ImageConfig::default()
        },
        created: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(inputs.source_date_epoch)),
        created_by: Some(format!(
            "bora templates build-base (mmdebstrap --variant=minbase {} --include={})",
            inputs.suite,
            PACKAGES.join(",")
        )),
        ..ImportConfig::default()
    };
    let image = store
        .import_rootfs(BASE_NAME, &tarball, &config, &|_| {})
        .await
        .with_context(|| format!("importing {}", tarball.display()))?;
    std::fs::write(&image_file, format!("{}\n", image.pinned))
        .with_context(|| format!("writing {}", image_file.display()))?;
    eprintln!(
        "bora: base template ready in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    println!("{}", image.pinned);
    Ok(image.pinned)
}

/// Run mmdebstrap into `tarball` (through a temporary name), echoing its progress.
fn run_mmdebstrap(inputs: &Inputs, args: &BuildBaseArgs, tarball: &Path) -> anyhow::Result<()> {
    let Some(mmdebstrap) = find_in_path("mmdebstrap") else {
        bail!(
            "mmdebstrap is not installed: install mmdebstrap (apt install mmdebstrap), or run scripts/install-deps.sh"
        );
    };
    let partial = tarball.with_extension("tar.partial");
    let _ = std::fs::remove_file(&partial);
    let mut command = Command::new(&mmdebstrap);
    command
        .env("SOURCE_DATE_EPOCH", inputs.source_date_epoch.to_string())
        .arg("--mode=root")
        .arg("--variant=minbase")
        .arg("--format=tar")
        .arg(format!("--include={}", PACKAGES.join(",")))
        // Like Debian's slim images: no manual pages or documentation but the licenses.
        .args([
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/info/*",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--dpkgopt=path-exclude=/usr/share/lintian/*",
        ])
        .arg("--aptopt=Acquire::Retries \"3\"")
        .arg(format!("--customize-hook={CUSTOMIZE_HOOK}"));
    if Path::new(MERGED_USR_HOOKS).is_dir() {
        command.arg(format!("--hook-dir={MERGED_USR_HOOKS}"));
    }
    command
        .arg(&inputs.suite)
        .arg(&partial)
        .args(&inputs.sources)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", mmdebstrap.display()))?;
    // mmdebstrap reports on stderr; apt and the hooks may write on stdout. Echo both.
    let stdout = child.stdout.take().expect("piped");
    let echo_stdout = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("  | {line}");
        }
    });
    let mut tail: Vec<String> = Vec::new();
    for line in BufReader::new(child.stderr.take().expect("piped"))
        .lines()
        .map_while(Result::ok)
    {
        eprintln!("  | {line}");
        tail.push(line);
        if tail.len() > 200 {
            tail.remove(0);
        }
    }
    let _ = echo_stdout.join();
    let status = child.wait().context("waiting for mmdebstrap")?;
    if !status.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(mmdebstrap_failure(&tail, args, status));
    }
    std::fs::rename(&partial, tarball).with_context(|| format!("renaming {}", partial.display()))
}

/// A clear error from mmdebstrap's last lines: network trouble names the mirror.
fn mmdebstrap_failure(
    tail: &[String],
    args: &BuildBaseArgs,
    status: std::process::ExitStatus,
) -> anyhow::Error {
    const NETWORK: &[&str] = &[
        "Could not resolve",
        "Temporary failure resolving",
        "Unable to connect",
        "Could not connect",
        "Connection failed",
        "Connection timed out",
        "No route to host",
        "Network is unreachable",
    ];
    let find = |needles: &[&str]| {
        tail.iter()
            .find(|line| needles.iter().any(|n| line.contains(n)))
            .map(|line| line.trim().to_string())
    };
    if let Some(line) = find(NETWORK) {
        let security = match args.security_mirror.as_str() {
            "none" => String::new(),
            url => format!(" or the security mirror {url}"),
        };
        return anyhow::anyhow!(
            "cannot download Debian packages from the mirror {}{security}: {line}; check the network and the mirror URL (--mirror, --security-mirror)",
            args.mirror,
        );
    }
    if let Some(line) = find(&["does not have a Release file", "404", "Failed to fetch"]) {
        return anyhow::anyhow!(
            "the mirror {} has no Debian suite {:?} (or a file is missing): {line}; check --suite and --mirror",
            args.mirror,
            args.suite
        );
    }
    let last: Vec<&str> = tail
        .iter()
        .rev()
        .take(5)
        .rev()
        .map(String::as_str)
        .collect();
    anyhow::anyhow!(
        "mmdebstrap failed ({status}); its last lines:\n  {}",
        last.join("\n  ")
    )
}

/// Serialise builds of one data directory (a second one waits, then finds the cache).
fn lock(path: &Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    use nix::fcntl::{Flock, FlockArg};
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => return Ok(lock),
        Err((file, _)) => file,
    };
    eprintln!("bora: another build of the base template is running; waiting for it");
    let _ = std::io::stderr().flush();
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", path.display()))
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn modified_ago(path: &Path) -> String {
    let age = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .unwrap_or_default();
    match age.as_secs() {
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s if s < 172_800 => format!("{}h ago", s / 3600),
        s => format!("{} days ago", s / 86_400),
    }
}

fn human_size(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(suite: &str, mirror: &str, security: &str) -> BuildBaseArgs {
        BuildBaseArgs {
            suite: suite.into(),
            mirror: mirror.into(),
            security_mirror: security.into(),
            rebuild: false,
        }
    }

    #[test]
    fn inputs_name_the_sources_and_key_the_cache() {
        let a = Inputs::new(&args("bookworm", DEFAULT_MIRROR, DEFAULT_SECURITY_MIRROR)).unwrap();
        assert_eq!(
            a.sources,
            [
                "deb http://deb.debian.org/debian bookworm main",
                "deb http://deb.debian.org/debian bookworm-updates main",
                "deb http://deb.debian.org/debian-security bookworm-security main",
            ]
        );
        assert!(a.key().starts_with("bookworm-"));
        let b = Inputs::new(&args("bookworm", "http://mirror.example/debian/", "none")).unwrap();
        assert_eq!(b.sources.len(), 2);
        assert_eq!(
            b.sources[0],
            "deb http://mirror.example/debian bookworm main"
        );
        assert_ne!(a.key(), b.key());
        let sid = Inputs::new(&args("sid", DEFAULT_MIRROR, DEFAULT_SECURITY_MIRROR)).unwrap();
        assert_eq!(sid.sources, ["deb http://deb.debian.org/debian sid main"]);
        assert_eq!(
            a.key(),
            Inputs::new(&args("bookworm", DEFAULT_MIRROR, DEFAULT_SECURITY_MIRROR))
                .unwrap()
                .key()
        );
    }

    #[test]
    fn bad_inputs_are_refused() {
        let err = Inputs::new(&args("Bookworm;rm", DEFAULT_MIRROR, "none"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("invalid --suite"), "{err}");
        let err = Inputs::new(&args("bookworm", "deb.debian.org", "none"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("invalid --mirror"), "{err}");
        let err = Inputs::new(&args("bookworm", "http://a b", "none"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("invalid --mirror"), "{err}");
    }

    #[test]
    fn failures_name_the_mirror() {
        let a = args("bookworm", "http://mirror.invalid/debian", "none");
        let status = std::process::Command::new("false").status().unwrap();
        let lines = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let err = mmdebstrap_failure(
            &lines(&[
                "I: running apt-get update...",
                "W: Failed to fetch http://mirror.invalid/debian/dists/bookworm/InRelease  Could not resolve 'mirror.invalid'",
                "E: apt-get update failed",
            ]),
            &a,
            status,
        );
        let text = err.to_string();
        assert!(
            text.contains("from the mirror http://mirror.invalid/debian"),
            "{text}"
        );
        let err = mmdebstrap_failure(
            &lines(&[
                "E: The repository 'http://deb.debian.org/debian nope Release' does not have a Release file.",
            ]),
            &a,
            status,
        );
        assert!(
            err.to_string().contains("no Debian suite \"bookworm\""),
            "{err}"
        );
        let err = mmdebstrap_failure(&lines(&["E: something else"]), &a, status);
        assert!(err.to_string().contains("E: something else"), "{err}");
    }
}
