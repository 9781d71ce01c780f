//! The group service's state in one SQLite file: groups (with their CA keys), join requests,
//! issued certificates, revocations, admin sessions and settings.
//!
//! The file is marked with an application id and a schema version. Opening refuses a file that
//! is not SQLite, is damaged, or belongs to another program, and never overwrites it; an older
//! ringlet schema is migrated in one transaction.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

/// `PRAGMA application_id` of a ringlet group database ("RLGS").
const APPLICATION_ID: i64 = 0x524c_4753;
/// Migrations, in order; the schema version is how many have run.
const MIGRATIONS: &[&str] = &[r"
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE groups (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        description TEXT NOT NULL,
        policy TEXT NOT NULL,
        auto_signed INTEGER NOT NULL DEFAULT 0,
        ca_seed BLOB NOT NULL,
        created INTEGER NOT NULL
    );
    CREATE TABLE requests (
        id INTEGER PRIMARY KEY,
        group_id INTEGER NOT NULL REFERENCES groups(id),
        user TEXT NOT NULL,
        node_key BLOB NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'denied')),
        created INTEGER NOT NULL,
        decided INTEGER
    );
    CREATE INDEX requests_by_node ON requests(group_id, node_key);
    CREATE TABLE certs (
        serial INTEGER PRIMARY KEY,
        group_id INTEGER NOT NULL REFERENCES groups(id),
        user TEXT NOT NULL,
        node_key BLOB NOT NULL,
        expires INTEGER NOT NULL,
        text TEXT NOT NULL,
        request_id INTEGER REFERENCES requests(id)
    );
    CREATE TABLE revocations (
        id INTEGER PRIMARY KEY,
        group_id INTEGER NOT NULL REFERENCES groups(id),
        line TEXT NOT NULL,
        what TEXT NOT NULL,
        issued INTEGER NOT NULL
    );
    CREATE TABLE sessions (token TEXT PRIMARY KEY, csrf TEXT NOT NULL, created INTEGER NOT NULL);
"];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path} is not a ringlet group database ({why}); it was left as it is")]
    Foreign { path: PathBuf, why: String },
    #[error("{path} was written by a newer ringlet (schema {found}, this one knows {known})")]
    Newer { path: PathBuf, found: i64, known: i64 },
    #[error("group database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("cannot create the group database: {0}")]
    Create(String),
}

/// One row of `groups`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRow {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub policy: String,
    pub auto_signed: i64,
    pub ca_seed: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRow {
    pub id: i64,
    pub user: String,
    pub node_key: [u8; 32],
    pub state: String,
    pub created: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRow {
    pub serial: u64,
    pub user: String,
    pub node_key: [u8; 32],
    pub expires: i64,
    pub text: String,
    pub request_id: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationRow {
    pub line: String,
    pub what: String,
    pub issued: i64,
}

pub struct Store {
    db: Connection,
}

impl Store {
    /// Opens (or creates, mode 0600) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let fresh = !path.exists();
        if fresh {
            // An empty file of mode 0600 first: SQLite would create it readable by others.
            crate::secure::files::write_new_private(path, "")
                .map_err(|e| StoreError::Create(e.to_string()))?;
        }
        let db = Connection::open(path)?;
        let check = (|| -> rusqlite::Result<(i64, i64, i64)> {
            let app: i64 = db.query_row("PRAGMA application_id", [], |r| r.get(0))?;
            let version: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            let tables: i64 = db.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
            Ok((app, version, tables))
        })();
        let (app, version, tables) = check.map_err(|e| foreign(path, &e.to_string()))?;
        if app != APPLICATION_ID && !(app == 0 && version == 0 && tables == 0) {
            return Err(foreign(path, &format!("application id {app:#x}")));
        }
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::Newer {
                path: path.into(),
                found: version,
                known,
            });
        }
        let integrity: String = db.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if integrity != "ok" {
            return Err(foreign(path, &format!("damaged: {integrity}")));
        }
        db.execute_batch("PRAGMA foreign_keys = ON;")?;
        let mut store = Store { db };
        store.migrate(version)?;
        Ok(store)
    }

    fn migrate(&mut self, from: i64) -> Result<(), StoreError> {
        let tx = self.db.transaction()?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)?;
        }
        tx.pragma_update(None, "application_id", APPLICATION_ID)?;
        tx.commit()?;
        Ok(())
    }

    pub fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .db
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.db.execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// Adds a group; `None` when the name is taken.
    pub fn add_group(
        &self,
        name: &str,
        description: &str,
        policy: &str,
        ca_seed: &[u8; 32],
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        let added = self.db.execute(
            "INSERT INTO groups (name, description, policy, ca_seed, created) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(name) DO NOTHING",
            params![name, description, policy, &ca_seed[..], now],
        )?;
        Ok((added == 1).then(|| self.db.last_insert_rowid()))
    }

    pub fn groups(&self) -> Result<Vec<GroupRow>, StoreError> {
        let mut stmt = self.db.prepare(
            "SELECT id, name, description, policy, auto_signed, ca_seed FROM groups ORDER BY name",
        )?;
        let rows = stmt.query_map([], group_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn group(&self, name: &str) -> Result<Option<GroupRow>, StoreError> {
        Ok(self
            .db
            .query_row(
                "SELECT id, name, description, policy, auto_signed, ca_seed FROM groups WHERE name = ?1",
                [name],
                group_row,
            )
            .optional()?)
    }

    pub fn count_auto_signed(&self, group: i64) -> Result<(), StoreError> {
        self.db.execute(
            "UPDATE groups SET auto_signed = auto_signed + 1 WHERE id = ?1",
            [group],
        )?;
        Ok(())
    }

    pub fn add_request(
        &self,
        group: i64,
        user: &str,
        node_key: &[u8; 32],
        now: i64,
    ) -> Result<i64, StoreError> {
        self.db.execute(
            "INSERT INTO requests (group_id, user, node_key, state, created) VALUES (?1, ?2, ?3, 'pending', ?4)",
            params![group, user, &node_key[..], now],
        )?;
        Ok(self.db.last_insert_rowid())
    }

    /// The newest request of this node key in the group.
    pub fn request_of(&self, group: i64, node_key: &[u8; 32]) -> Result<Option<RequestRow>, StoreError> {
        Ok(self
            .db
            .query_row(
                "SELECT id, user, node_key, state, created FROM requests
                 WHERE group_id = ?1 AND node_key = ?2 ORDER BY id DESC LIMIT 1",
                params![group, &node_key[..]],
                request_row,
            )
            .optional()?)
    }

    pub fn request(&self, group: i64, id: i64) -> Result<Option<RequestRow>, StoreError> {
        Ok(self
            .db
            .query_row(
                "SELECT id, user, node_key, state, created FROM requests WHERE group_id = ?1 AND id = ?2",
                params![group, id],
                request_row,
            )
            .optional()?)
    }

    pub fn requests(&self, group: i64, state: &str) -> Result<Vec<RequestRow>, StoreError> {
        let mut stmt = self.db.prepare(
            "SELECT id, user, node_key, state, created FROM requests
             WHERE group_id = ?1 AND state = ?2 ORDER BY id",
        )?;
        let rows = stmt.query_map(params![group, state], request_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Moves a pending request to `state`; false when it was not pending.
    pub fn decide(&self, group: i64, id: i64, state: &str, now: i64) -> Result<bool, StoreError> {
        let n = self.db.execute(
            "UPDATE requests SET state = ?3, decided = ?4 WHERE group_id = ?1 AND id = ?2 AND state = 'pending'",
            params![group, id, state, now],
        )?;
        Ok(n == 1)
    }

    pub fn add_cert(&self, group: i64, row: &CertRow) -> Result<(), StoreError> {
        self.db.execute(
            "INSERT INTO certs (serial, group_id, user, node_key, expires, text, request_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                row.serial as i64,
                group,
                row.user,
                &row.node_key[..],
                row.expires,
                row.text,
                row.request_id
            ],
        )?;
        Ok(())
    }

    pub fn certs(&self, group: i64) -> Result<Vec<CertRow>, StoreError> {
        let mut stmt = self.db.prepare(
            "SELECT serial, user, node_key, expires, text, request_id FROM certs
             WHERE group_id = ?1 ORDER BY user, expires",
        )?;
        let rows = stmt.query_map([group], cert_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn cert_for_request(&self, request: i64) -> Result<Option<CertRow>, StoreError> {
        Ok(self
            .db
            .query_row(
                "SELECT serial, user, node_key, expires, text, request_id FROM certs
                 WHERE request_id = ?1 ORDER BY expires DESC LIMIT 1",
                [request],
                cert_row,
            )
            .optional()?)
    }

    pub fn add_revocation(&self, group: i64, line: &str, what: &str, issued: i64) -> Result<(), StoreError> {
        self.db.execute(
            "INSERT INTO revocations (group_id, line, what, issued) VALUES (?1, ?2, ?3, ?4)",
            params![group, line, what, issued],
        )?;
        Ok(())
    }

    pub fn revocations(&self, group: i64) -> Result<Vec<RevocationRow>, StoreError> {
        let mut stmt = self
            .db
            .prepare("SELECT line, what, issued FROM revocations WHERE group_id = ?1 ORDER BY id")?;
        let rows = stmt.query_map([group], |r| {
            Ok(RevocationRow {
                line: r.get(0)?,
                what: r.get(1)?,
                issued: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn add_session(&self, token: &str, csrf: &str, now: i64) -> Result<(), StoreError> {
        self.db.execute(
            "INSERT INTO sessions (token, csrf, created) VALUES (?1, ?2, ?3)",
            params![token, csrf, now],
        )?;
        Ok(())
    }

    /// The CSRF token of a session created after `not_before`.
    pub fn session(&self, token: &str, not_before: i64) -> Result<Option<String>, StoreError> {
        Ok(self
            .db
            .query_row(
                "SELECT csrf FROM sessions WHERE token = ?1 AND created >= ?2",
                params![token, not_before],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn end_session(&self, token: &str) -> Result<(), StoreError> {
        self.db
            .execute("DELETE FROM sessions WHERE token = ?1", [token])?;
        Ok(())
    }
}

fn foreign(path: &Path, why: &str) -> StoreError {
    StoreError::Foreign {
        path: path.into(),
        why: why.to_owned(),
    }
}

fn key32(bytes: Vec<u8>) -> rusqlite::Result<[u8; 32]> {
    bytes.try_into().map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, "key of 32 bytes".into())
    })
}

fn group_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<GroupRow> {
    Ok(GroupRow {
        id: r.get(0)?,
        name: r.get(1)?,
        description: r.get(2)?,
        policy: r.get(3)?,
        auto_signed: r.get(4)?,
        ca_seed: key32(r.get(5)?)?,
    })
}

fn request_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RequestRow> {
    Ok(RequestRow {
        id: r.get(0)?,
        user: r.get(1)?,
        node_key: key32(r.get(2)?)?,
        state: r.get(3)?,
        created: r.get(4)?,
    })
}

fn cert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CertRow> {
    Ok(CertRow {
        serial: r.get::<_, i64>(0)? as u64,
        user: r.get(1)?,
        node_key: key32(r.get(2)?)?,
        expires: r.get(3)?,
        text: r.get(4)?,
        request_id: r.get(5)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("groups.db");
        {
            let store = Store::open(&path).unwrap();
            let g = store
                .add_group("friends", "d", "manual", &[7; 32], 1)
                .unwrap()
                .unwrap();
            assert_eq!(
                store.add_group("friends", "again", "auto", &[8; 32], 2).unwrap(),
                None
            );
            store.add_request(g, "bob@example.org", &[1; 32], 3).unwrap();
            store.set_setting("k", "v").unwrap();
        }
        let store = Store::open(&path).unwrap();
        let g = store.group("friends").unwrap().unwrap();
        assert_eq!((g.description.as_str(), g.ca_seed), ("d", [7; 32]));
        assert_eq!(store.requests(g.id, "pending").unwrap().len(), 1);
        assert_eq!(store.setting("k").unwrap().as_deref(), Some("v"));
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o077, 0);
    }

    #[test]
    fn foreign_and_damaged_files_are_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("notes.db");
        std::fs::write(&text, "my shopping list, not a database\n".repeat(200)).unwrap();
        let before = std::fs::read(&text).unwrap();
        assert!(matches!(Store::open(&text), Err(StoreError::Foreign { .. })));
        assert_eq!(std::fs::read(&text).unwrap(), before);

        let other = dir.path().join("other.db");
        let db = Connection::open(&other).unwrap();
        db.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        drop(db);
        let err = Store::open(&other).err().unwrap();
        assert!(err.to_string().contains("not a ringlet group database"), "{err}");

        let newer = dir.path().join("newer.db");
        drop(Store::open(&newer).unwrap());
        let db = Connection::open(&newer).unwrap();
        db.pragma_update(None, "user_version", 99).unwrap();
        drop(db);
        assert!(matches!(
            Store::open(&newer),
            Err(StoreError::Newer { found: 99, .. })
        ));
    }
}
