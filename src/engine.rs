//! One call that runs features → classifier → policy against the current model snapshot.

use std::sync::Arc;

use crate::config::{Config, ModelRef};
use crate::error::Error;
use crate::features::{Conversation, MarkerSet};
use crate::model_store::ModelStore;
use crate::policy::{self, Knobs, TierView};

/// A validated routing request.
#[derive(Debug, Clone, Default)]
pub struct RouteInput {
    /// The routed (last user) message.
    pub prompt: String,
    /// Every other message's content.
    pub context: Vec<String>,
    /// User/assistant turns before the routed message.
    pub prior_turns: u32,
    /// The caller's knobs.
    pub knobs: Knobs,
    /// The caller's tenant, for the decision log.
    pub tenant: Option<String>,
    /// The caller's labels, for the decision log.
    pub labels: std::collections::BTreeMap<String, String>,
}

impl RouteInput {
    /// Attributes the request to the caller's token: its name is the tenant unless the
    /// request names its own.
    pub fn attribute(&mut self, who: Option<&crate::auth::Identity>) {
        if let (None, Some(who)) = (&self.tenant, who) {
            self.tenant = Some(who.name.clone());
        }
    }
}

/// The engine's answer for one request.
#[derive(Debug, Clone)]
pub struct Decision {
    /// UUIDv7: unique and time-sortable.
    pub decision_id: uuid::Uuid,
    /// Chosen tier index.
    pub tier: usize,
    /// Chosen tier name.
    pub tier_name: String,
    /// The chosen tier's chain.
    pub chain: Vec<ModelRef>,
    /// Estimated cost on the chosen tier, USD.
    pub estimated_cost_usd: f64,
    /// Per-tier view, cheapest first, with names.
    pub tiers: Vec<(String, TierView)>,
    /// Tokens in the routed prompt.
    pub prompt_tokens: u32,
    /// Tokens in the rest of the conversation.
    pub context_tokens: u32,
    /// Detected markers.
    pub markers: MarkerSet,
    /// The feature vector, for the decision log (which takes it: empty once logged).
    pub features: Vec<f32>,
    /// Whether exploration overrode the policy's choice.
    pub explored: bool,
    /// Probability with which the chosen tier was chosen.
    pub propensity: f64,
    /// Feature schema fingerprint of the vector.
    pub schema_fingerprint: String,
    /// Model version that decided.
    pub model_version: String,
    /// Why.
    pub reason: String,
}

/// Routes requests with the config's tiers and the store's current model.
#[derive(Debug)]
pub struct Engine {
    config: Arc<Config>,
    store: ModelStore,
    /// Exploration draws from a seeded generator instead of the thread's, so replays and
    /// benchmarks that route through the engine give the same decisions on every run.
    seeded: Option<std::sync::Mutex<rand::rngs::StdRng>>,
}

impl Engine {
    /// An engine over a config and a loaded model store.
    pub fn new(config: Arc<Config>, store: ModelStore) -> Self {
        Self {
            config,
            store,
            seeded: None,
        }
    }

    /// The same engine, with exploration drawn from a generator seeded with `seed` (for
    /// replays and benchmarks; the server draws from the thread's generator).
    #[must_use]
    pub fn with_exploration_seed(mut self, seed: u64) -> Self {
        use rand::SeedableRng;
        self.seeded = Some(std::sync::Mutex::new(rand::rngs::StdRng::seed_from_u64(
            seed,
        )));
        self
    }

    /// Two uniform draws for exploration.
    fn draws(&self) -> (f64, f64) {
        use rand::Rng;
        match self.seeded.as_ref().and_then(|m| m.lock().ok()) {
            Some(mut rng) => (rng.r#gen(), rng.r#gen()),
            None => (rand::random(), rand::random()),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The model store (for reloads).
    pub fn store(&self) -> &ModelStore {
        &self.store
    }

    /// Decides a tier for one request. Pure apart from the decision id.
    pub fn route(&self, input: &RouteInput) -> Result<Decision, Error> {
        let snap = self.store.current();
        let context: Vec<&str> = input.context.iter().map(String::as_str).collect();
        let features = snap
            .featurizer
            .featurize(Conversation {
                prompt: &input.prompt,
                context: &context,
                prior_turns: input.prior_turns,
            })
            .map_err(Error::Featurize)?;
        let p = snap.classifier.score(&features.vector);
        let input_tokens = u64::from(features.prompt_tokens) + u64::from(features.context_tokens);
        let output_tokens = u64::from(self.config.expected_output_tokens);
        let costs: Vec<f64> = self
            .config
            .tiers
            .iter()
            .map(|t| t.cost_usd(input_tokens, output_tokens))
            .collect();
        let names = snap.classifier.tiers();
        let choice = policy::decide(
            &p,
            &snap.thresholds,
            &costs,
            names,
            &input.knobs,
            self.config.latency_sensitive_max_tier,
        )?;
        let eligible: Vec<usize> = (0..choice.tiers.len())
            .filter(|&i| choice.tiers[i].eligible)
            .collect();
        let (u, v) = self.draws();
        let (chosen, propensity) =
            policy::explore(choice.tier, &eligible, self.config.exploration_rate, u, v);
        let mut reason = choice.reason;
        if chosen != choice.tier {
            reason.push_str(&format!(
                "; exploring: sent to {} instead of {} (exploration_rate {})",
                names[chosen], names[choice.tier], self.config.exploration_rate
            ));
        }
        let tier = &self.config.tiers[chosen];
        Ok(Decision {
            decision_id: uuid::Uuid::now_v7(),
            tier: chosen,
            explored: chosen != choice.tier,
            propensity,
            schema_fingerprint: snap.featurizer.schema().fingerprint.clone(),
            tier_name: tier.name.clone(),
            chain: tier.chain.clone(),
            estimated_cost_usd: costs[chosen],
            tiers: names.iter().cloned().zip(choice.tiers).collect(),
            prompt_tokens: features.prompt_tokens,
            context_tokens: features.context_tokens,
            markers: features.markers,
            features: features.vector,
            model_version: snap.classifier.version().to_string(),
            reason,
        })
    }
}
