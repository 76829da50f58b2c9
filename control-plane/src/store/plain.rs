//! The store's plain types: what is read (entries, listings, reads), what the watch delivers,
//! what is written (write plans and their commits), and how a store call fails. Nothing here
//! knows etcd.

/// One key as read from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision of the key's last modification (a resource's `resourceVersion`).
    pub mod_revision: i64,
}

/// A change seen on the watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(Entry),
    /// `revision` is the revision of the deletion.
    Delete {
        key: String,
        revision: i64,
    },
}

/// What the watch delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMessage {
    /// Every change under the prefix up to and including `revision`.
    Events {
        revision: i64,
        events: Vec<WatchEvent>,
    },
    /// The watch started from a revision etcd compacted away: re-list, then watch again.
    Compacted { compact_revision: i64 },
}

/// Everything under the prefix at one revision.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub revision: i64,
    pub entries: Vec<Entry>,
}

/// A read inside one consistent read transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    Key(String),
    /// Every key under a prefix; with `keys_only` the values are left empty.
    Prefix {
        prefix: String,
        keys_only: bool,
    },
}

/// The answers of [`EtcdStore::read`], one list per [`Read`], at one revision.
#[derive(Debug, Clone, Default)]
pub struct ReadResult {
    pub revision: i64,
    pub answers: Vec<Vec<Entry>>,
}

/// The condition a write depends on: the key's current `mod_revision` (0: the key is absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    pub key: String,
    pub mod_revision: i64,
}

/// One atomic write: every guard must hold, then every put and delete is applied in one etcd
/// transaction — or nothing is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WritePlan {
    pub guards: Vec<Guard>,
    pub puts: Vec<(String, Vec<u8>)>,
    pub deletes: Vec<String>,
}

impl WritePlan {
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty()
    }
}

/// How a [`WritePlan`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Applied at this revision.
    Committed { revision: i64 },
    /// A guard did not hold (someone else wrote first); nothing was written.
    GuardFailed,
}

/// Why the store could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No endpoint answered (refused, reset, timed out, no leader): retryable, later.
    #[error("etcd is unreachable at {endpoints}: {reason}")]
    Unavailable { endpoints: String, reason: String },
    /// etcd answered with an error that retrying will not fix.
    #[error("etcd refused {operation}: {message}")]
    Refused {
        operation: &'static str,
        message: String,
    },
    /// The configuration cannot work (a malformed endpoint).
    #[error("etcd client configuration: {0}")]
    Config(String),
}
