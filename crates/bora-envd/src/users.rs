//! The sandbox's users, read straight from its `/etc/passwd` and
//! `/etc/group`.
//!
//! envd is a static binary, so it must not use libc's `getpwnam`: static
//! glibc would try to load NSS modules that match neither the binary nor the
//! image (Alpine has none at all). Parsing the files is also exactly right
//! for a sandbox: its users are whatever its image and its commands
//! (`useradd`) put there, so the files are read again on every lookup.

use std::path::{Path, PathBuf};

/// One `/etc/passwd` entry, with the groups it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: String,
    /// Supplementary groups from `/etc/group` (primary group included).
    pub groups: Vec<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user {name:?} does not exist in {passwd}")]
    Unknown { name: String, passwd: PathBuf },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where the account files live (`/etc` in a sandbox; a temp dir in tests).
#[derive(Debug, Clone)]
pub struct Accounts {
    etc: PathBuf,
}

impl Accounts {
    pub fn new(etc: impl Into<PathBuf>) -> Self {
        Self { etc: etc.into() }
    }

    fn passwd(&self) -> PathBuf {
        self.etc.join("passwd")
    }

    fn group(&self) -> PathBuf {
        self.etc.join("group")
    }

    /// Looks `name` up. A missing `/etc/group` only means no supplementary
    /// groups; a missing `/etc/passwd` means only `root` (uid 0, home
    /// `/root`) exists, so distroless-style images still work as root.
    pub fn lookup(&self, name: &str) -> Result<User, UserError> {
        let passwd_path = self.passwd();
        let passwd = match std::fs::read_to_string(&passwd_path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(UserError::Read {
                    path: passwd_path,
                    source,
                });
            }
        };
        let mut user = match parse_passwd(&passwd).into_iter().find(|u| u.name == name) {
            Some(u) => u,
            None if name == "root" => User {
                name: "root".into(),
                uid: 0,
                gid: 0,
                home: "/root".into(),
                shell: "/bin/sh".into(),
                groups: Vec::new(),
            },
            None => {
                return Err(UserError::Unknown {
                    name: name.to_string(),
                    passwd: passwd_path,
                });
            }
        };
        let group = std::fs::read_to_string(self.group()).unwrap_or_default();
        user.groups = supplementary_groups(&group, &user.name, user.gid);
        Ok(user)
    }

    /// The name of uid `uid` (see [`Names::user`]).
    pub fn user_name(&self, uid: u32) -> String {
        self.names().user(uid)
    }

    /// The name of gid `gid` (see [`Names::group`]).
    pub fn group_name(&self, gid: u32) -> String {
        self.names().group(gid)
    }

    /// A snapshot of both files, to name many owners at once (ListDir).
    pub fn names(&self) -> Names {
        Names {
            passwd: std::fs::read_to_string(self.passwd()).unwrap_or_default(),
            group: std::fs::read_to_string(self.group()).unwrap_or_default(),
        }
    }
}

/// uid/gid → name, from one reading of the account files.
#[derive(Debug, Clone, Default)]
pub struct Names {
    passwd: String,
    group: String,
}

impl Names {
    /// The name of `uid`; `root` for 0 even without `/etc/passwd`, else the
    /// number when unknown.
    pub fn user(&self, uid: u32) -> String {
        name_by_id(&self.passwd, uid).unwrap_or_else(|| fallback_name(uid))
    }

    /// The name of `gid`, like [`Names::user`].
    pub fn group(&self, gid: u32) -> String {
        name_by_id(&self.group, gid).unwrap_or_else(|| fallback_name(gid))
    }
}

fn fallback_name(id: u32) -> String {
    if id == 0 {
        "root".into()
    } else {
        id.to_string()
    }
}

/// `name:x:id:...` lines (passwd and group share the first three fields).
fn name_by_id(file: &str, id: u32) -> Option<String> {
    file.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _pw = f.next()?;
        let n: u32 = f.next()?.trim().parse().ok()?;
        (n == id && !name.is_empty()).then(|| name.to_string())
    })
}

/// Parses `/etc/passwd`: `name:password:uid:gid:gecos:home:shell`.
/// Comments, blank and malformed lines are skipped, the way libc does.
pub fn parse_passwd(s: &str) -> Vec<User> {
    s.lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 || f[0].is_empty() {
                return None;
            }
            Some(User {
                name: f[0].to_string(),
                uid: f[2].trim().parse().ok()?,
                gid: f[3].trim().parse().ok()?,
                home: PathBuf::from(if f[5].is_empty() { "/" } else { f[5] }),
                shell: f[6].to_string(),
                groups: Vec::new(),
            })
        })
        .collect()
}

/// Parses `/etc/group` (`name:password:gid:member,member`) for the groups
/// listing `user`, plus its primary group, sorted and deduplicated.
pub fn supplementary_groups(s: &str, user: &str, primary: u32) -> Vec<u32> {
    let mut groups: Vec<u32> = s
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            let gid: u32 = f[2].trim().parse().ok()?;
            f[3].split(',').any(|m| m.trim() == user).then_some(gid)
        })
        .collect();
    groups.push(primary);
    groups.sort_unstable();
    groups.dedup();
    groups
}

/// `PATH` for processes whose environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl User {
    /// The home directory if it exists, else `/`.
    pub fn home_or_root(&self) -> &Path {
        if self.home.is_dir() {
            &self.home
        } else {
            Path::new("/")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
# a comment

daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
user:x:1000:1000:,,,:/home/user:/bin/bash
broken:x:notanumber:1::/x:/bin/sh
short:x:5
nohome:x:1001:1001:::/bin/sh
";

    const GROUP: &str = "\
root:x:0:
sudo:x:27:user,other
docker:x:999:other, user
user:x:1000:
bad:x:zz:user
";

    #[test]
    fn parses_passwd_skipping_bad_lines() {
        let users = parse_passwd(PASSWD);
        let names: Vec<_> = users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["root", "daemon", "user", "nohome"]);
        let user = &users[2];
        assert_eq!((user.uid, user.gid), (1000, 1000));
        assert_eq!(user.home, PathBuf::from("/home/user"));
        assert_eq!(user.shell, "/bin/bash");
        assert_eq!(users[3].home, PathBuf::from("/"));
    }

    #[test]
    fn supplementary_groups_include_primary_and_memberships() {
        assert_eq!(supplementary_groups(GROUP, "user", 1000), [27, 999, 1000]);
        assert_eq!(supplementary_groups(GROUP, "nobody", 65534), [65534]);
        assert_eq!(supplementary_groups("", "root", 0), [0]);
    }

    #[test]
    fn lookup_reads_the_files_every_time() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("passwd"), PASSWD).unwrap();
        std::fs::write(dir.path().join("group"), GROUP).unwrap();
        let accounts = Accounts::new(dir.path());
        let u = accounts.lookup("user").unwrap();
        assert_eq!(u.groups, [27, 999, 1000]);
        let err = accounts.lookup("ghost").unwrap_err().to_string();
        assert!(err.contains("\"ghost\"") && err.contains("passwd"), "{err}");

        std::fs::write(
            dir.path().join("passwd"),
            format!("{PASSWD}ghost:x:2000:2000::/home/ghost:/bin/sh\n"),
        )
        .unwrap();
        assert_eq!(accounts.lookup("ghost").unwrap().uid, 2000);
        assert_eq!(accounts.user_name(2000), "ghost");
        assert_eq!(accounts.user_name(4242), "4242");
        assert_eq!(accounts.group_name(27), "sudo");
    }

    #[test]
    fn root_exists_without_passwd() {
        let dir = tempfile::tempdir().unwrap();
        let accounts = Accounts::new(dir.path());
        let root = accounts.lookup("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(accounts.lookup("user").is_err());
        assert_eq!(accounts.user_name(0), "root");
        assert_eq!(accounts.group_name(0), "root");
        assert_eq!(accounts.user_name(7), "7");
    }
}
