//! Per-session state that outlives a run: variables by name. Stateful
//! kernels (VariableV2, Assign, ApplyRMSProp, …) reach it through
//! `OpContext::resources`; each variable has its own lock so updates of
//! different variables run in parallel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use psflow_kernels::Tensor;

/// A variable's slot: `None` until initialized.
pub type VarSlot = Arc<RwLock<Option<Tensor>>>;

#[derive(Default)]
pub struct ResourceStore {
    vars: Mutex<HashMap<String, VarSlot>>,
}

impl ResourceStore {
    pub fn new() -> ResourceStore {
        ResourceStore::default()
    }

    /// The slot of variable `name`, created (uninitialized) on first use.
    pub fn variable(&self, name: &str) -> VarSlot {
        let mut vars = self.vars.lock().expect("resource map lock");
        vars.entry(name.to_string()).or_default().clone()
    }

    /// The current value of a variable, if it exists and is initialized.
    pub fn get(&self, name: &str) -> Option<Tensor> {
        let slot = self
            .vars
            .lock()
            .expect("resource map lock")
            .get(name)?
            .clone();
        let value = slot.read().expect("variable lock").clone();
        value
    }

    /// Sets a variable's value, creating it if needed.
    pub fn set(&self, name: &str, value: Tensor) {
        *self.variable(name).write().expect("variable lock") = Some(value);
    }

    /// Names of all variables, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .vars
            .lock()
            .expect("resource map lock")
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_created_set_and_shared() {
        let store = ResourceStore::new();
        assert!(store.get("w").is_none());
        let slot = store.variable("w");
        assert!(slot.read().unwrap().is_none());
        store.set("w", Tensor::scalar(2f32));
        assert_eq!(*slot.read().unwrap(), Some(Tensor::scalar(2f32)));
        assert_eq!(store.get("w"), Some(Tensor::scalar(2f32)));
        assert_eq!(store.names(), vec!["w".to_string()]);
    }
}
