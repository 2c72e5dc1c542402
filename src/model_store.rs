//! The current model snapshot behind `ArcSwap`: loading, validation against the config, and
//! keep-the-old-on-error replacement.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::classifier::Classifier;
use crate::config::Config;
use crate::error::LoadError;
use crate::features::Featurizer;

/// Everything one decision reads, swapped as a unit so a request never mixes two models.
#[derive(Debug)]
pub struct Snapshot {
    /// The featurizer the classifier was validated against.
    pub featurizer: Arc<Featurizer>,
    /// The classifier.
    pub classifier: Classifier,
    /// Effective threshold per tier: the config's override, else the model file's.
    pub thresholds: Vec<f64>,
}

/// Holds the current [`Snapshot`].
#[derive(Debug)]
pub struct ModelStore {
    current: ArcSwap<Snapshot>,
}

fn snapshot(
    config: &Config,
    featurizer: Arc<Featurizer>,
    path: &Path,
) -> Result<Snapshot, LoadError> {
    let bytes = crate::files::read_regular(path, config.model.max_model_bytes)
        .map_err(|e| LoadError::io(path, e))?;
    snapshot_of(config, featurizer, path, &bytes)
}

fn snapshot_of(
    config: &Config,
    featurizer: Arc<Featurizer>,
    path: &Path,
    bytes: &[u8],
) -> Result<Snapshot, LoadError> {
    let classifier = Classifier::from_bytes(bytes, featurizer.schema())
        .map_err(|m| LoadError::invalid(path, m))?;
    let want = config.tier_names();
    if classifier.tiers() != want.as_slice() {
        return Err(LoadError::invalid(
            path,
            format!(
                "the model's tiers [{}] differ from the config's tiers [{}]; retrain with matching --tiers or fix the config",
                classifier.tiers().join(", "),
                want.join(", ")
            ),
        ));
    }
    let thresholds = config
        .tiers
        .iter()
        .zip(&classifier.file().thresholds)
        .map(|(t, m)| t.threshold.unwrap_or(*m))
        .collect();
    Ok(Snapshot {
        featurizer,
        classifier,
        thresholds,
    })
}

impl ModelStore {
    /// Loads the featurizer and classifier named by the config; any mismatch is an error.
    pub fn open(config: &Config) -> Result<Self, LoadError> {
        let featurizer = Arc::new(Featurizer::load(&config.model.embeddings)?);
        Self::with_featurizer(config, featurizer, &config.model.classifier)
    }

    /// Like [`Self::open`] with an already loaded featurizer and an explicit model path.
    pub fn with_featurizer(
        config: &Config,
        featurizer: Arc<Featurizer>,
        path: &Path,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            current: ArcSwap::from_pointee(snapshot(config, featurizer, path)?),
        })
    }

    /// The snapshot to use for one request.
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replaces the classifier with the one at `path`. On any error the old model keeps
    /// serving. In-flight requests finish on the snapshot they started with.
    pub fn reload(&self, config: &Config, path: &Path) -> Result<String, LoadError> {
        let next = snapshot(config, self.current().featurizer.clone(), path)?;
        Ok(self.install(next))
    }

    /// Like [`Self::reload`] with the file's bytes already read; `path` only names it in errors.
    pub fn reload_bytes(
        &self,
        config: &Config,
        path: &Path,
        bytes: &[u8],
    ) -> Result<String, LoadError> {
        let next = snapshot_of(config, self.current().featurizer.clone(), path, bytes)?;
        Ok(self.install(next))
    }

    fn install(&self, next: Snapshot) -> String {
        let version = next.classifier.version().to_string();
        self.current.store(Arc::new(next));
        version
    }
}
