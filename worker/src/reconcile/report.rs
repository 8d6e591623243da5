//! What a reconcile found and did: counts per class, and the first ids of each class.

use std::collections::BTreeMap;

use serde::Serialize;

/// The classes of drift a run can find: labels of `reconcile_drift_total` and keys of a run's
/// recorded counts ([`Report::drift`] pairs each with its count, in this order).
pub const DRIFT_CLASSES: [&str; 5] = [
    "missing",
    "no_workspace",
    "stale",
    "orphaned",
    "unprovisionable",
];

/// Ids listed per class; counts go on past it, so memory does not grow with the instance.
pub const MAX_LISTED_IDS: usize = 1000;

/// One class of users: how many, and the first [`MAX_LISTED_IDS`] of them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Class {
    pub count: u64,
    pub ids: Vec<String>,
}

impl Class {
    /// Counts `id`, listing it while the list has room.
    pub fn add(&mut self, id: &str) {
        self.count += 1;
        if self.ids.len() < MAX_LISTED_IDS {
            self.ids.push(id.to_owned());
        }
    }
}

/// Users Clerk has that the consumer would dead-letter, by reason code.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Unprovisionable {
    pub count: u64,
    pub by_reason: BTreeMap<&'static str, u64>,
    pub ids: Vec<(String, &'static str)>,
}

impl Unprovisionable {
    /// Counts `id` under `reason`.
    pub fn add(&mut self, id: &str, reason: &'static str) {
        self.count += 1;
        *self.by_reason.entry(reason).or_default() += 1;
        if self.ids.len() < MAX_LISTED_IDS {
            self.ids.push((id.to_owned(), reason));
        }
    }
}

/// The whole run: what differs between Clerk and the database, and what was changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub applied: bool,
    /// Users read from Clerk.
    pub clerk_users: u64,
    /// Users whose row and workspace already match Clerk.
    pub in_sync: u64,
    pub missing: Class,
    pub no_workspace: Class,
    pub stale: Class,
    /// Users Clerk changed in the last minutes that differ: repaired, but not drift (their
    /// webhooks may still be on their way).
    pub recent: Class,
    pub orphaned: Class,
    pub unprovisionable: Unprovisionable,
    /// Users provisioned by this run (missing, workspace-less or stale ones).
    pub provisioned: u64,
    /// Orphans deleted by this run (each leaves a tombstone).
    pub deleted: u64,
    /// Users or orphans that could not be fixed (a database error): the run exits non-zero.
    pub failed: Class,
    /// Orphan deletion was asked for but refused by the `--max-delete-fraction` guard.
    pub deletion_refused: bool,
}

impl Report {
    /// True when everything asked for was done.
    pub fn succeeded(&self) -> bool {
        self.failed.count == 0 && !self.deletion_refused
    }

    /// How many users of each class in [`DRIFT_CLASSES`] the run found, in that order.
    pub fn drift(&self) -> [(&'static str, u64); 5] {
        [
            ("missing", self.missing.count),
            ("no_workspace", self.no_workspace.count),
            ("stale", self.stale.count),
            ("orphaned", self.orphaned.count),
            ("unprovisionable", self.unprovisionable.count),
        ]
    }

    /// The one-line summary printed and logged at the end.
    pub fn summary(&self) -> String {
        format!(
            "reconcile {}: {} Clerk users, {} in sync, {} missing, {} without workspace, {} stale, \
             {} recently changed, {} orphaned, {} unprovisionable; {} provisioned, {} deleted, \
             {} failed{}",
            if self.applied { "applied" } else { "dry run" },
            self.clerk_users,
            self.in_sync,
            self.missing.count,
            self.no_workspace.count,
            self.stale.count,
            self.recent.count,
            self.orphaned.count,
            self.unprovisionable.count,
            self.provisioned,
            self.deleted,
            self.failed.count,
            if self.deletion_refused {
                "; orphan deletion refused (over --max-delete-fraction; --force to override)"
            } else {
                ""
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_names_each_count_by_its_own_class() {
        let mut report = Report::default();
        report.missing.add("a");
        for id in ["b", "c"] {
            report.no_workspace.add(id);
        }
        for id in ["d", "e", "f"] {
            report.stale.add(id);
        }
        report.recent.add("not drift");
        for id in ["g", "h", "i", "j"] {
            report.orphaned.add(id);
        }
        for id in ["k", "l", "m", "n", "o"] {
            report.unprovisionable.add(id, "missing_email");
        }
        assert_eq!(
            report.drift(),
            [
                ("missing", 1),
                ("no_workspace", 2),
                ("stale", 3),
                ("orphaned", 4),
                ("unprovisionable", 5)
            ]
        );
        let names: Vec<&str> = report.drift().iter().map(|(class, _)| *class).collect();
        assert_eq!(names, DRIFT_CLASSES);
    }
}
