//! Where feedback and model versions live when they outgrow one machine.
//!
//! The embedded default is the file log and manifest (`core::stream`, `core::registry`);
//! `postgres` keeps the same things in PostgreSQL tables so that many processes on many
//! machines share one feedback log, one registry and one production pointer.

pub mod pg_registry;
pub mod pg_stream;
pub mod pg_tls;
pub mod postgres;
#[cfg(test)]
pub(crate) mod testpg;

use parking_lot::Mutex;
use postgres::{PgOptions, PgStore, StoreError};
use std::collections::HashMap;
use std::sync::OnceLock;

/// The environment variable that selects PostgreSQL when no option names a store.
pub const DATABASE_URL_ENV: &str = "MLOPS_DATABASE_URL";

/// One store (one pool, one schema check) per connection string and schema per process:
/// every `RealTimeModelUpdates` and `ModelFineTuning` on the same database shares it.
/// Blocks the calling thread (never the JS thread: callers are workers) for at most
/// `connect_timeout`. A failed connect is not cached; the next call tries again.
pub fn connect_shared(url: &str, opts: PgOptions) -> Result<PgStore, StoreError> {
    let key = (url.to_owned(), opts.schema.clone());
    let map = stores();
    if let Some(s) = map.lock().get(&key) {
        return Ok(s.clone());
    }
    let u = url.to_owned();
    let timeout = opts.connect_timeout + opts.statement_timeout + std::time::Duration::from_secs(1);
    let store =
        super::runtime::block_on_timeout(async move { PgStore::connect(&u, opts).await }, timeout)
            .map_err(|e| StoreError {
                kind: postgres::ErrorKind::Timeout,
                message: format!("PostgreSQL {}: {e}", redact_conn_str(url)),
            })??;
    Ok(map.lock().entry(key).or_insert(store).clone())
}

/// The store [`connect_shared`] made for this connection string and schema, if any;
/// never connects (for callers that must not wait).
pub fn existing_shared(url: &str, schema: &str) -> Option<PgStore> {
    stores()
        .lock()
        .get(&(url.to_owned(), schema.to_owned()))
        .cloned()
}

fn stores() -> &'static Mutex<HashMap<(String, String), PgStore>> {
    static STORES: OnceLock<Mutex<HashMap<(String, String), PgStore>>> = OnceLock::new();
    STORES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Replaces the password of a connection string (URL or `key=value` form) with `***`.
/// Every error message that could carry a connection string goes through this.
pub fn redact_conn_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    // URL form: scheme://user:password@host → scheme://user:***@host
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?', '#' or whitespace.
        let end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    // key=value form and query parameters: password=… → password=***
    let mut result = String::with_capacity(out.len());
    let lower = out.to_ascii_lowercase();
    let mut i = 0;
    while i < out.len() {
        let found = lower[i..].find("password").map(|k| k + i);
        let Some(k) = found else {
            result.push_str(&out[i..]);
            break;
        };
        let mut j = k + "password".len();
        let bytes = out.as_bytes();
        while j < out.len() && bytes[j] == b' ' {
            j += 1;
        }
        if j < out.len() && bytes[j] == b'=' {
            j += 1;
            while j < out.len() && bytes[j] == b' ' {
                j += 1;
            }
            result.push_str(&out[i..j]);
            result.push_str("***");
            // Skip the value: quoted, or up to whitespace / '&'.
            if j < out.len() && bytes[j] == b'\'' {
                j += 1;
                while j < out.len() && bytes[j] != b'\'' {
                    j += if bytes[j] == b'\\' { 2 } else { 1 };
                }
                j = (j + 1).min(out.len());
            } else {
                while j < out.len() && !matches!(bytes[j], b' ' | b'&' | b'\n' | b'\t') {
                    j += 1;
                }
            }
            i = j;
        } else {
            result.push_str(&out[i..j]);
            i = j;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::redact_conn_str;

    #[test]
    fn passwords_never_survive_redaction() {
        assert_eq!(
            redact_conn_str("postgres://app:s3cr%40t@db.example:5432/mlops?sslmode=disable"),
            "postgres://app:***@db.example:5432/mlops?sslmode=disable"
        );
        assert_eq!(
            redact_conn_str("cannot reach postgresql://u:pw@h/x (refused)"),
            "cannot reach postgresql://u:***@h/x (refused)"
        );
        assert_eq!(
            redact_conn_str("postgres://u@h/db"),
            "postgres://u@h/db",
            "no password, nothing to hide"
        );
        assert_eq!(
            redact_conn_str("host=h user=u password='a b\\'c' dbname=d"),
            "host=h user=u password=*** dbname=d"
        );
        assert_eq!(
            redact_conn_str("postgres://h/db?user=u&password=pw&x=1"),
            "postgres://h/db?user=u&password=***&x=1"
        );
        assert_eq!(redact_conn_str("password = x"), "password = ***");
    }
}
