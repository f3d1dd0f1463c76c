//! Small integer ids for device ids (kind [`DEVICE`]) and metric names
//! (kind [`METRIC`]), so rows do not repeat strings: table `names`, and
//! its mirror in the anchor.

use crate::record::intern;
use rusqlite::{Connection, params};
use std::collections::HashMap;

/// `(id, name)` pairs of devices and of metrics: the names as the anchor
/// and a salvage job keep them.
pub(crate) type NamePairs = (Vec<(i64, String)>, Vec<(i64, String)>);

/// The highest id of each kind at some moment (see [`Names::mark`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark([Option<i64>; 2]);

/// The two name maps.
#[derive(Debug, Default)]
pub(crate) struct Names {
    by_id: [HashMap<i64, &'static str>; 2],
    by_name: [HashMap<&'static str, i64>; 2],
}

/// Kinds of names.
pub(crate) const DEVICE: usize = 0;
/// Metric names.
pub(crate) const METRIC: usize = 1;

impl Names {
    pub(crate) fn load(conn: &Connection) -> rusqlite::Result<Names> {
        let mut names = Names::default();
        let mut stmt = conn.prepare("SELECT kind, id, name FROM names")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        for row in rows {
            let (kind, id, name) = row?;
            if let Ok(kind @ (DEVICE | METRIC)) = usize::try_from(kind) {
                names.insert(kind, id, intern(&name));
            }
        }
        Ok(names)
    }

    pub(crate) fn insert(&mut self, kind: usize, id: i64, name: &'static str) {
        self.by_id[kind].insert(id, name);
        self.by_name[kind].insert(name, id);
    }

    /// The id of `name`, creating it (inside the caller's transaction).
    pub(crate) fn id(
        &mut self,
        conn: &Connection,
        kind: usize,
        name: &str,
    ) -> rusqlite::Result<i64> {
        if let Some(id) = self.by_name[kind].get(name) {
            return Ok(*id);
        }
        let kind_i = kind as i64;
        conn.execute(
            "INSERT OR IGNORE INTO names (kind, id, name)
             VALUES (?1, (SELECT coalesce(max(id), -1) + 1 FROM names WHERE kind = ?1), ?2)",
            params![kind_i, name],
        )?;
        let id: i64 = conn.query_row(
            "SELECT id FROM names WHERE kind = ?1 AND name = ?2",
            params![kind_i, name],
            |r| r.get(0),
        )?;
        self.insert(kind, id, intern(name));
        Ok(id)
    }

    /// The metrics blob of `metrics` (see [`super::row`]), creating the
    /// ids of new metric names (inside the caller's transaction).
    pub(crate) fn encode_metrics(
        &mut self,
        conn: &Connection,
        metrics: &[(&str, Option<f64>)],
    ) -> rusqlite::Result<Vec<u8>> {
        let mut error = None;
        let blob = super::row::encode_metrics(metrics, |name| match self.id(conn, METRIC, name) {
            Ok(id) => u8::try_from(id).unwrap_or(super::row::MAX_NAME_ID),
            Err(e) => {
                error = Some(e);
                super::row::MAX_NAME_ID
            }
        });
        match error {
            Some(e) => Err(e),
            None => Ok(blob),
        }
    }

    /// Where the ids stand now: the ids a transaction creates from here
    /// on are above the mark (ids only grow).
    pub(crate) fn mark(&self) -> Mark {
        Mark([DEVICE, METRIC].map(|kind| self.by_id[kind].keys().max().copied()))
    }

    /// Whether ids were created since `mark`.
    pub(crate) fn grew_since(&self, mark: Mark) -> bool {
        self.mark() != mark
    }

    /// Forgets the ids created since `mark`: their transaction rolled back.
    pub(crate) fn rollback_to(&mut self, mark: Mark) {
        for kind in [DEVICE, METRIC] {
            let keep = |id: &i64| mark.0[kind].is_some_and(|k| *id <= k);
            self.by_id[kind].retain(|id, _| keep(id));
            self.by_name[kind].retain(|_, id| keep(id));
        }
    }

    /// The id of `name`, if it has one.
    pub(crate) fn id_of(&self, kind: usize, name: &str) -> Option<i64> {
        self.by_name[kind].get(name).copied()
    }

    pub(crate) fn name(&self, kind: usize, id: i64) -> Option<&'static str> {
        self.by_id[kind].get(&id).copied()
    }

    /// Every `(id, name)` of `kind`, by id (the anchor's mirror).
    pub(crate) fn pairs(&self, kind: usize) -> Vec<(i64, String)> {
        let mut pairs: Vec<(i64, String)> = self.by_id[kind]
            .iter()
            .map(|(id, name)| (*id, (*name).to_owned()))
            .collect();
        pairs.sort();
        pairs
    }

    /// Names from `(id, name)` pairs per kind (a name or id seen twice
    /// keeps its first pairing).
    pub(crate) fn from_pairs(devices: &[(i64, String)], metrics: &[(i64, String)]) -> Names {
        let mut names = Names::default();
        for (kind, pairs) in [(DEVICE, devices), (METRIC, metrics)] {
            for (id, name) in pairs {
                if !names.by_id[kind].contains_key(id)
                    && !names.by_name[kind].contains_key(name.as_str())
                {
                    names.insert(kind, *id, intern(name));
                }
            }
        }
        names
    }

    /// Writes every name into the `names` table of `conn` (ids kept).
    pub(crate) fn store(&self, conn: &Connection) -> rusqlite::Result<()> {
        let mut insert = conn
            .prepare_cached("INSERT OR IGNORE INTO names (kind, id, name) VALUES (?1, ?2, ?3)")?;
        for kind in [DEVICE, METRIC] {
            for (id, name) in &self.by_id[kind] {
                insert.execute(params![kind as i64, id, name])?;
            }
        }
        Ok(())
    }
}
