//! The store: etcd behind plain types. [`etcd`] is the only module that speaks etcd; [`keys`]
//! is the key schema. Everything above works with [`Entry`], [`WatchEvent`] and [`WritePlan`].

pub mod etcd;
pub mod keys;
pub mod plain;
pub mod values;

pub use etcd::{EtcdStore, EtcdTls, LeaseKeeper, StoreOptions, Watcher};
pub use plain::{
    Commit, Entry, Guard, Listing, Read, ReadResult, StoreError, WatchEvent, WatchMessage,
    WritePlan,
};
