//! The memory backend against the conformance suite.

use std::sync::Arc;

use taskrun_store::{Store, StoreConfig};
use taskrun_store_memory::MemoryStore;

async fn make(config: StoreConfig) -> Arc<dyn Store> {
    Arc::new(MemoryStore::with_config(config))
}

taskrun_store::conformance_tests!(make);
