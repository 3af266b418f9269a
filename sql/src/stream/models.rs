//! Which model versions a running pipeline scores with.
//!
//! A pipeline pins one version of every model it uses. The pins change only at a checkpoint
//! boundary: when the source injects a barrier and sees that a model's active version moved
//! (ALTER MODEL ... SET ACTIVE VERSION / ROLLBACK, or a first version), the barrier carries
//! the new pins, the source waits until that checkpoint has committed (so every row before the
//! barrier was scored, through every stage, with the old pins), then switches and goes on.
//! The checkpoint record keeps the pins, so rows replayed after a crash are scored by the
//! version that was active for their epoch: no row is lost or scored twice, and
//! `PREDICT_VERSION(model)` in the same query tells which version scored a row.

use std::collections::BTreeMap;
use std::sync::Arc;

use eddy_udf::predict::{ModelLookup, Resolved};
use parking_lot::Mutex;

/// Model name → version.
pub type ModelVersions = BTreeMap<String, u32>;

/// The catalog's models as pipelines see them (the engine implements it).
pub trait ModelSource: Send + Sync + std::fmt::Debug {
    /// The active version of `name`, if the model exists.
    fn active_version(&self, name: &str) -> Option<u32>;
    /// Whether `name` has version `version`.
    fn has_version(&self, name: &str, version: u32) -> bool;
    /// The loaded session of one version.
    fn load(&self, name: &str, version: u32) -> Result<Resolved, String>;
}

/// The pins of one pipeline, and PREDICT's lookup inside it.
#[derive(Debug)]
pub struct PinnedModels {
    source: Arc<dyn ModelSource>,
    pins: Mutex<ModelVersions>,
}

impl PinnedModels {
    /// Starts from the pins of the checkpoint the pipeline resumes from (versions that no
    /// longer exist are dropped: those models resolve to their active version again).
    pub fn new(source: Arc<dyn ModelSource>, recorded: &ModelVersions) -> Arc<Self> {
        let pins = recorded
            .iter()
            .filter(|(name, version)| source.has_version(name, **version))
            .map(|(n, v)| (n.clone(), *v))
            .collect();
        Arc::new(Self {
            source,
            pins: Mutex::new(pins),
        })
    }

    /// The versions in use now.
    pub fn pinned(&self) -> ModelVersions {
        self.pins.lock().clone()
    }

    /// The versions the pinned models' active versions call for now.
    pub fn wanted(&self) -> ModelVersions {
        self.pins
            .lock()
            .iter()
            .map(|(name, v)| (name.clone(), self.source.active_version(name).unwrap_or(*v)))
            .collect()
    }

    /// Switches to `versions` (only between checkpoints, see the module doc).
    pub fn set(&self, versions: ModelVersions) {
        *self.pins.lock() = versions;
    }
}

impl ModelLookup for PinnedModels {
    fn model(&self, name: &str) -> Result<Resolved, String> {
        let version = {
            let mut pins = self.pins.lock();
            match pins.get(name) {
                Some(v) => *v,
                None => {
                    let v = self
                        .source
                        .active_version(name)
                        .ok_or_else(|| format!("model \"{name}\" does not exist"))?;
                    pins.insert(name.to_string(), v);
                    v
                }
            }
        };
        self.source.load(name, version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Versions only (loading needs ONNX Runtime, which the wire tests cover).
    #[derive(Debug, Default)]
    struct Catalog {
        active: Mutex<ModelVersions>,
    }

    impl ModelSource for Catalog {
        fn active_version(&self, name: &str) -> Option<u32> {
            self.active.lock().get(name).copied()
        }
        fn has_version(&self, name: &str, version: u32) -> bool {
            self.active.lock().get(name).is_some_and(|v| version <= *v)
        }
        fn load(&self, name: &str, version: u32) -> Result<Resolved, String> {
            Err(format!("{name} v{version}"))
        }
    }

    #[test]
    fn a_pin_holds_until_it_is_switched() {
        let catalog = Arc::new(Catalog::default());
        catalog.active.lock().insert("m".into(), 1);
        let pins = PinnedModels::new(catalog.clone(), &ModelVersions::new());
        assert_eq!(pins.model("m").unwrap_err(), "m v1", "pinned at first use");
        assert_eq!(pins.model("x").unwrap_err(), "model \"x\" does not exist");
        catalog.active.lock().insert("m".into(), 2);
        assert_eq!(
            pins.model("m").unwrap_err(),
            "m v1",
            "still v1 until switched"
        );
        let wanted = pins.wanted();
        assert_eq!(wanted.get("m"), Some(&2));
        pins.set(wanted);
        assert_eq!(pins.model("m").unwrap_err(), "m v2");
        // A restart resumes with the checkpoint's pins; unknown versions are dropped.
        let recorded = ModelVersions::from([("m".to_string(), 1), ("m2".to_string(), 9)]);
        let resumed = PinnedModels::new(catalog, &recorded);
        assert_eq!(
            resumed.pinned(),
            ModelVersions::from([("m".to_string(), 1)])
        );
    }
}
