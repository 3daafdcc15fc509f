//! Who may connect: [`Users`] with their [`Role`]s and salted, slow password hashes (Argon2id,
//! PHC strings), from a users file or the quick `name:password` form.

use std::collections::HashMap;
use std::path::Path;
use std::sync::LazyLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, password_hash::rand_core::OsRng};

use crate::redacted::Redacted;
use crate::{Error, Result};

/// What a user may do.
///
/// | | `read` | `admin` |
/// |---|---|---|
/// | queries, prepared statements, browsing, `ListExports`, `ListSnapshots` | yes | yes |
/// | `AddView`, `RefreshTable`, `CancelExport`, SQL `fhir_add_view`, `fhir_refresh` | no (`PERMISSION_DENIED`) | yes |
///
/// A query still exports the tables it reads when their snapshots are missing or stale, whatever
/// the role: what the catalog's freshness allows, at most one export per type at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Queries and browsing.
    Read,
    /// Everything, including what changes the server's tables or exports.
    Admin,
}

impl std::str::FromStr for Role {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        role(text).map_err(Error::config)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Read => "read",
            Role::Admin => "admin",
        })
    }
}

#[derive(Debug, Clone)]
struct User {
    /// The Argon2id PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`).
    hash: Redacted<String>,
    role: Role,
}

/// The users allowed to connect, each with a [`Role`] and a salted Argon2id hash of the password
/// (never the password itself).
///
/// In production the users come from a file ([`Users::from_file`], `serve --users-file`), whose
/// lines [`Users::entry`] makes (`fhirflight users add`). The quick form
/// [`Users::parse`] (`--users` / `FHIRFLIGHT_USERS`) takes passwords in clear and makes admins:
/// for a local or demo server.
///
/// ```
/// use fhirflight::flight::{Role, Users};
/// let line = Users::entry("carol", "a long passphrase", Role::Read).unwrap();
/// assert!(line.starts_with("carol:read:$argon2id$"));
/// let users = Users::parse("alice:wonderland,bob:builder").unwrap();
/// assert_eq!(users.len(), 2);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Users(HashMap<String, User>);

/// A hash to verify unknown names against, so that a wrong name costs as much as a wrong
/// password and does not tell which names exist.
static DECOY: LazyLock<String> = LazyLock::new(|| hash("decoy password").unwrap_or_default());

impl Users {
    /// No users.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a user (replacing one of the same name), hashing `password`. A name is letters,
    /// digits and `._@-`; an empty password is refused.
    pub fn with_user(
        self,
        name: impl Into<String>,
        password: impl AsRef<str>,
        role: Role,
    ) -> Result<Self> {
        let name = checked_name(name.into()).map_err(Error::config)?;
        let hash = hash(password.as_ref()).map_err(Error::config)?;
        Ok(self.with_hash(name, hash, role))
    }

    /// The quick form of `--users` and `FHIRFLIGHT_USERS`: `name:password` pairs separated by
    /// commas (a password may contain `:` but not `,`), every user an admin. Errors say which
    /// entry by its position, never by its text (which holds a password).
    pub fn parse(spec: &str) -> Result<Self> {
        spec.split(',')
            .map(str::trim)
            .filter(|pair| !pair.is_empty())
            .enumerate()
            .try_fold(Self::new(), |users, (index, pair)| {
                let entry =
                    |message: &str| Error::config(format!("users: entry {} {message}", index + 1));
                let (name, password) = pair
                    .split_once(':')
                    .ok_or_else(|| entry("is not `name:password`"))?;
                let refused = |reason: String| entry(&format!("is refused: {reason}"));
                let name = checked_name(name.to_owned()).map_err(refused)?;
                let hash = hash(password).map_err(refused)?;
                Ok(users.with_hash(name, hash, Role::Admin))
            })
    }

    /// Reads a users file: one `name:role:hash` line per user (role `read` or `admin`, hash an
    /// Argon2id PHC string as [`Users::entry`] makes it); blank lines and lines starting with `#`
    /// are skipped. Errors name the file and the line, never show the line.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut users = Self::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |message: String| {
                Error::config(format!("{}:{}: {message}", path.display(), index + 1))
            };
            let mut fields = line.splitn(3, ':');
            let (Some(name), Some(role), Some(hash)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(at("expected `name:role:hash`".into()));
            };
            let name = checked_name(name.to_owned()).map_err(at)?;
            let role = self::role(role).map_err(|e| at(e.to_owned()))?;
            let valid = PasswordHash::new(hash).is_ok_and(|h| h.algorithm.as_str() == "argon2id");
            if !valid {
                return Err(at(
                    "the hash is not an Argon2id PHC string (make the line with `fhirflight users add`)"
                        .into(),
                ));
            }
            users = users.with_hash(name, hash.to_owned(), role);
        }
        Ok(users)
    }

    /// `self` with a user whose name and hash are checked.
    fn with_hash(mut self, name: String, hash: String, role: Role) -> Self {
        let hash = Redacted(hash);
        self.0.insert(name, User { hash, role });
        self
    }

    /// The users-file line of a user: `name:role:hash`, with a fresh salt.
    pub fn entry(name: &str, password: &str, role: Role) -> Result<String> {
        let name = checked_name(name.to_owned()).map_err(Error::config)?;
        let hash = hash(password).map_err(Error::config)?;
        Ok(format!("{name}:{role}:{hash}"))
    }

    /// The number of users.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no users.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The role of `name` if `password` is theirs. Slow on purpose (Argon2): call it off the
    /// async threads.
    pub(crate) fn verify(&self, name: &str, password: &str) -> Option<Role> {
        let user = self.0.get(name);
        let hash = user.map_or(DECOY.as_str(), |u| u.hash.as_str());
        let parsed = PasswordHash::new(hash).ok()?;
        let matches = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        user.filter(|_| matches).map(|u| u.role)
    }
}

// The checks below return the reason alone: each caller says where (an entry, a file's line).

/// The Argon2id PHC string of `password` with a random salt (the OWASP parameters, argon2's
/// defaults: 19 MiB, 2 passes).
fn hash(password: &str) -> std::result::Result<String, String> {
    if password.is_empty() {
        return Err("an empty password is not allowed".into());
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing a password: {e}"))
}

fn checked_name(name: String) -> std::result::Result<String, String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c));
    match valid {
        true => Ok(name),
        false => Err("a user name is 1 to 64 letters, digits and `._@-`".into()),
    }
}

fn role(text: &str) -> std::result::Result<Role, &'static str> {
    match text {
        "read" => Ok(Role::Read),
        "admin" => Ok(Role::Admin),
        _ => Err("a role is `read` or `admin`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_form_makes_admins_and_never_echoes_an_entry() {
        let users = Users::parse("alice:a:b, bob:builder").unwrap();
        assert_eq!(users.verify("alice", "a:b"), Some(Role::Admin));
        assert_eq!(users.verify("alice", "a"), None);
        assert_eq!(users.verify("mallory", "a:b"), None);
        for (spec, error) in [
            ("nocolonsecret", "users: entry 1 is not `name:password`"),
            (
                "bob:x,alice:",
                "users: entry 2 is refused: an empty password is not allowed",
            ),
            (
                "a b:secret",
                "users: entry 1 is refused: a user name is 1 to 64 letters, digits and `._@-`",
            ),
        ] {
            let err = Users::parse(spec).unwrap_err().to_string();
            assert_eq!(err, format!("configuration: {error}"));
            assert!(!err.contains("secret"));
        }
        let debug = format!("{users:?}");
        assert!(
            debug.contains("alice") && !debug.contains("argon2"),
            "{debug}"
        );
    }

    #[test]
    fn users_file_lines_hold_roles_and_salted_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        let carol = Users::entry("carol", "passphrase", Role::Read).unwrap();
        let dave = Users::entry("dave", "passphrase", Role::Admin).unwrap();
        assert_ne!(carol[11..], dave[11..], "each hash has its own salt");
        std::fs::write(&path, format!("# users\n\n{carol}\n{dave}\n")).unwrap();
        let users = Users::from_file(&path).unwrap();
        assert_eq!(users.verify("carol", "passphrase"), Some(Role::Read));
        assert_eq!(users.verify("dave", "passphrase"), Some(Role::Admin));
        assert_eq!(users.verify("dave", "wrong"), None);

        let p = path.display();
        for (text, error) in [
            ("eve:read\n", format!("{p}:1: expected `name:role:hash`")),
            (
                "# x\neve:root:$argon2id$\n",
                format!("{p}:2: a role is `read` or `admin`"),
            ),
            (
                "eve:read:5e884898da28047151d0e56f8dc629\n",
                format!(
                    "{p}:1: the hash is not an Argon2id PHC string (make the line with `fhirflight users add`)"
                ),
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = Users::from_file(&path).unwrap_err().to_string();
            assert_eq!(err, format!("configuration: {error}"));
        }
    }
}
