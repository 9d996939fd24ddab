//! A service with handles on the concrete test doubles it was built over.
//! Services hold their store and index as trait objects; tests also steer
//! and inspect the doubles themselves (seed objects, inject faults, read
//! the index), through these handles.

use std::ops::Deref;
use std::sync::Arc;

/// `service` and the `store` and `index` it was built over. Derefs to the
/// service, so tests call it as before; `built.store` and `built.index`
/// are the concrete doubles.
#[derive(Debug)]
pub struct Built<T, S, I> {
    pub service: T,
    pub store: Arc<S>,
    pub index: Arc<I>,
}

impl<T, S, I> Built<T, S, I> {
    /// Builds a service with `build` over `store` and `index`, keeping
    /// handles on both.
    pub fn new(store: S, index: I, build: impl FnOnce(Arc<S>, Arc<I>) -> T) -> Self {
        let (store, index) = (Arc::new(store), Arc::new(index));
        Self {
            service: build(Arc::clone(&store), Arc::clone(&index)),
            store,
            index,
        }
    }
}

impl<T, S, I> Deref for Built<T, S, I> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.service
    }
}
