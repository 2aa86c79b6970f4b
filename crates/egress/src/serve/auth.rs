//! Client credentials for `egress serve`: an Apache htpasswd file, with
//! bcrypt (`$2y$`, the `bcrypt` crate), apr1 (`$apr1$`, Apache's MD5-crypt
//! over the `md-5` crate: no maintained crate verifies it without pulling an
//! unmaintained crypto stack) and `{SHA}` entries.
//!
//! bcrypt is slow on purpose, so a verified user:password pair is remembered
//! (as a SHA-256 of the pair) for the life of the file's policy.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use md5::{Digest as _, Md5};

use super::ServeError;

/// Verified pairs kept at most (then forgotten all at once).
const VERIFIED_CACHE: usize = 4096;

/// Users and password hashes from an htpasswd file.
#[derive(Clone)]
pub struct Htpasswd {
    users: Arc<HashMap<String, String>>,
    source: String,
    verified: Arc<Mutex<std::collections::HashSet<[u8; 32]>>>,
}

impl fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // User names only: hashes stay out of logs.
        let mut users: Vec<&String> = self.users.keys().collect();
        users.sort();
        f.debug_struct("Htpasswd")
            .field("source", &self.source)
            .field("users", &users)
            .finish()
    }
}

impl Htpasswd {
    /// Reads an htpasswd file (`user:hash` per line; `#` comments).
    pub fn read(path: &Path) -> Result<Htpasswd, ServeError> {
        let text = std::fs::read_to_string(path).map_err(|source| ServeError::Htpasswd {
            file: path.display().to_string(),
            problem: format!("cannot read it: {source}"),
        })?;
        Htpasswd::parse(&text, &path.display().to_string())
    }

    /// Parses htpasswd text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Htpasswd, ServeError> {
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |problem: String| ServeError::Htpasswd {
                file: source.to_owned(),
                problem: format!("line {}: {problem}", n + 1),
            };
            let Some((user, hash)) = line.split_once(':') else {
                return Err(bad("expected user:hash".to_owned()));
            };
            if !(hash.starts_with("$2y$")
                || hash.starts_with("$2b$")
                || hash.starts_with("$2a$")
                || hash.starts_with("$apr1$")
                || hash.starts_with("{SHA}"))
            {
                return Err(bad(format!(
                    "the hash for user {user} is neither bcrypt ($2y$), apr1 ($apr1$) nor {{SHA}}; \
                     make it with `htpasswd -B`"
                )));
            }
            users.insert(user.to_owned(), hash.to_owned());
        }
        if users.is_empty() {
            return Err(ServeError::Htpasswd {
                file: source.to_owned(),
                problem: "it has no user".to_owned(),
            });
        }
        Ok(Htpasswd {
            users: Arc::new(users),
            source: source.to_owned(),
            verified: Arc::default(),
        })
    }

    /// How many users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when there is no user (never, for a parsed file).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Where the users come from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// True when `user` exists and `password` matches its hash. Blocking
    /// (bcrypt) the first time a pair is seen.
    pub fn check(&self, user: &str, password: &str) -> bool {
        let Some(hash) = self.users.get(user) else {
            return false;
        };
        let key = pair_digest(user, password);
        if self.verified.lock().expect("not poisoned").contains(&key) {
            return true;
        }
        let ok = verify(password, hash);
        if ok {
            let mut verified = self.verified.lock().expect("not poisoned");
            if verified.len() >= VERIFIED_CACHE {
                verified.clear();
            }
            verified.insert(key);
        }
        ok
    }

    /// True when the pair was verified before (no hashing needed).
    pub(crate) fn known(&self, user: &str, password: &str) -> bool {
        self.users.contains_key(user)
            && self
                .verified
                .lock()
                .expect("not poisoned")
                .contains(&pair_digest(user, password))
    }
}

fn pair_digest(user: &str, password: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(user.as_bytes());
    ctx.update(&[0]);
    ctx.update(password.as_bytes());
    ctx.finish().as_ref().try_into().expect("32 bytes")
}

fn verify(password: &str, hash: &str) -> bool {
    if let Some(rest) = hash.strip_prefix("$apr1$") {
        let salt = rest.split('$').next().unwrap_or("");
        return constant_time_eq(apr1(password, salt).as_bytes(), hash.as_bytes());
    }
    if let Some(sha) = hash.strip_prefix("{SHA}") {
        let digest =
            ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, password.as_bytes());
        let ours = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
        return constant_time_eq(ours.as_bytes(), sha.as_bytes());
    }
    bcrypt::verify(password, hash).unwrap_or(false)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Apache's `$apr1$` hash: MD5-crypt (as in FreeBSD's crypt) with the magic
/// string `$apr1$`.
fn apr1(password: &str, salt: &str) -> String {
    const MAGIC: &str = "$apr1$";
    let pw = password.as_bytes();
    let salt = &salt.as_bytes()[..salt.len().min(8)];
    let mut alternate = Md5::new();
    alternate.update(pw);
    alternate.update(salt);
    alternate.update(pw);
    let alternate = alternate.finalize();

    let mut ctx = Md5::new();
    ctx.update(pw);
    ctx.update(MAGIC.as_bytes());
    ctx.update(salt);
    let mut left = pw.len();
    while left > 0 {
        let n = left.min(16);
        ctx.update(&alternate[..n]);
        left -= n;
    }
    let mut i = pw.len();
    while i > 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&pw[..1]);
        }
        i >>= 1;
    }
    let mut digest: [u8; 16] = ctx.finalize().into();
    for round in 0..1000 {
        let mut ctx = Md5::new();
        if round & 1 == 1 {
            ctx.update(pw);
        } else {
            ctx.update(digest);
        }
        if round % 3 != 0 {
            ctx.update(salt);
        }
        if round % 7 != 0 {
            ctx.update(pw);
        }
        if round & 1 == 1 {
            ctx.update(digest);
        } else {
            ctx.update(pw);
        }
        digest = ctx.finalize().into();
    }
    const ITOA64: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(40);
    out.push_str(MAGIC);
    out.push_str(std::str::from_utf8(salt).unwrap_or(""));
    out.push('$');
    let d = |i: usize| u32::from(digest[i]);
    for (value, chars) in [
        ((d(0) << 16) | (d(6) << 8) | d(12), 4),
        ((d(1) << 16) | (d(7) << 8) | d(13), 4),
        ((d(2) << 16) | (d(8) << 8) | d(14), 4),
        ((d(3) << 16) | (d(9) << 8) | d(15), 4),
        ((d(4) << 16) | (d(10) << 8) | d(5), 4),
        (d(11), 2),
    ] {
        let mut v = value;
        for _ in 0..chars {
            out.push(ITOA64[(v & 0x3f) as usize] as char);
            v >>= 6;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apr1_matches_openssl() {
        // `openssl passwd -apr1 -salt Zq8vYtA2 's3cret:pass@x'` and `-salt abc ''`.
        assert_eq!(
            apr1("s3cret:pass@x", "Zq8vYtA2"),
            "$apr1$Zq8vYtA2$.vsKZLebWsw.uOPBYNjmx/"
        );
        assert_eq!(apr1("", "abc"), "$apr1$abc$BfqKdn9xFDWJPa3kcp/PH0");
    }

    #[test]
    fn every_supported_hash_verifies_and_wrong_passwords_do_not() {
        let bcrypt = bcrypt::hash("b-pass", 4).unwrap();
        let text = format!(
            "# users\nalice:$apr1$Zq8vYtA2$.vsKZLebWsw.uOPBYNjmx/\nbob:{bcrypt}\n\
             carol:{{SHA}}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n"
        );
        let users = Htpasswd::parse(&text, "test").unwrap();
        assert!(users.check("alice", "s3cret:pass@x"));
        assert!(users.known("alice", "s3cret:pass@x"));
        assert!(!users.check("alice", "s3cret:pass@y"));
        assert!(users.check("bob", "b-pass"));
        assert!(!users.check("bob", "b-pas"));
        assert!(users.check("carol", "password"));
        assert!(!users.check("dave", "password"));
        let debug = format!("{users:?}");
        assert!(
            !debug.contains("$apr1$") && debug.contains("alice"),
            "{debug}"
        );
    }

    #[test]
    fn unsupported_hashes_name_the_line_and_user() {
        let err = Htpasswd::parse("x:abcdefgh\n", "/etc/egress/htpasswd").unwrap_err();
        assert!(
            err.to_string().contains("/etc/egress/htpasswd")
                && err.to_string().contains("line 1")
                && err.to_string().contains("user x"),
            "{err}"
        );
    }
}
