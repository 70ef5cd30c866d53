//! The sled backend: the conformance suite, persistence across reopening,
//! corrupt records, and the kill -9 crash test.

mod crash;
mod persistence;

use std::sync::Arc;

use taskrun_store::{Store, StoreConfig};
use taskrun_store_sled::SledStore;

async fn make(config: StoreConfig) -> Arc<dyn Store> {
    Arc::new(SledStore::temporary(config).expect("open a temporary sled store"))
}

taskrun_store::conformance_tests!(make);
