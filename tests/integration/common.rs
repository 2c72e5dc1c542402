//! Shared fixtures: a small labelled dataset made here, a model trained on it, a running server.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use triage::classifier::Classifier;
use triage::config::Config;
use triage::engine::Engine;
use triage::features::Featurizer;
use triage::model_store::ModelStore;
use triage::proto::v1::router_client::RouterClient;
use triage::train::dataset::{Row, TierMap};
use triage::train::{self, TrainOptions};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn embeddings() -> PathBuf {
    repo().join("models/embeddings")
}

pub fn featurizer() -> Arc<Featurizer> {
    static F: OnceLock<Arc<Featurizer>> = OnceLock::new();
    F.get_or_init(|| Arc::new(Featurizer::load(&embeddings()).unwrap()))
        .clone()
}

pub const TIERS: &str = "fast=small,standard=medium,frontier=large";

/// One labelled row of a workload where the two cheaper tiers score `cheap` and the frontier 1.
pub fn workload_row(id: String, source: &str, prompt: String, cheap: f64) -> Row {
    scored_row(id, source, prompt, cheap, 1.0)
}

/// One labelled row where the two cheaper tiers score `cheap` and the frontier `top`.
pub fn scored_row(id: String, source: &str, prompt: String, cheap: f64, top: f64) -> Row {
    Row {
        id,
        source: Some(source.into()),
        category: None,
        prompt,
        outcomes: [("small", cheap), ("medium", cheap), ("large", top)]
            .into_iter()
            .map(|(m, s)| (m.to_string(), s))
            .collect(),
    }
}

/// The classifier's per-tier scores for a one-message prompt, featurized by [`featurizer`].
pub fn scores_of(c: &Classifier, text: &str) -> Vec<f64> {
    c.score(
        &featurizer()
            .featurize(triage::features::Conversation::single(text))
            .unwrap()
            .vector,
    )
}

/// Easy small talk every tier answers; translations the middle tier answers; proofs only the
/// frontier answers. The signal is in the words, so a working featurizer + classifier finds it.
pub fn fixture_rows() -> Vec<Row> {
    let topics = [
        "the weather",
        "my weekend",
        "your day",
        "lunch",
        "the football game",
        "a movie",
        "music",
        "coffee",
        "the park",
        "a good book",
    ];
    let mut rows = Vec::new();
    for (i, t) in topics.iter().enumerate() {
        let mut add = |kind: &str, prompt: String, s: [f64; 3]| {
            rows.push(Row {
                id: format!("{kind}-{i}"),
                source: Some(kind.into()),
                category: None,
                prompt,
                outcomes: ["small", "medium", "large"]
                    .iter()
                    .map(|m| m.to_string())
                    .zip(s)
                    .collect(),
            })
        };
        add(
            "chat",
            format!("Hi! How are you? Let's chat about {t}."),
            [1.0, 1.0, 1.0],
        );
        add(
            "chat",
            format!("Hello, tell me something nice about {t}."),
            [1.0, 1.0, 1.0],
        );
        add(
            "translate",
            format!("Translate into French: I would like to talk about {t} tomorrow."),
            [0.0, 1.0, 1.0],
        );
        add(
            "translate",
            format!("Translate this sentence into German: {t} was wonderful."),
            [0.0, 1.0, 1.0],
        );
        add(
            "proof",
            format!(
                "Prove rigorously, step by step, that the integral of a convergent series related to {t} is bounded; derive every lemma."
            ),
            [0.0, 0.0, 1.0],
        );
        add(
            "proof",
            format!(
                "Derive and prove the theorem: for every prime p, the polynomial equation about {t} has a solution mod p. Justify each step."
            ),
            [0.0, 0.0, 1.0],
        );
    }
    rows
}

/// The shipped recipe with a light penalty: the fixture has 60 rows, not thousands.
pub fn options() -> TrainOptions {
    let mut opts = TrainOptions {
        folds: 3,
        prices: Some(vec![1.0, 3.0, 10.0]),
        ..TrainOptions::default()
    };
    opts.recipe.alpha = 1.0;
    opts
}

/// Trains the fixture model once per test binary and returns its path.
pub fn model_path() -> PathBuf {
    static M: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    M.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.json");
        write_model(&path);
        (dir, path)
    })
    .1
    .clone()
}

pub fn write_model(path: &Path) {
    let f = featurizer();
    let tiers: TierMap = TIERS.parse().unwrap();
    let data = train::prepare(&f, fixture_rows(), &tiers, false).unwrap();
    let (file, _) =
        train::train(&f, &data, &tiers, &options(), serde_json::json!("fixture")).unwrap();
    std::fs::write(path, serde_json::to_vec_pretty(&file).unwrap()).unwrap();
}

/// The shipped config pointed at the repo's embeddings and the fixture model.
pub fn config() -> Config {
    let mut c = Config::shipped().unwrap();
    c.model.embeddings = embeddings();
    c.model.classifier = model_path();
    c.server.max_prompt_bytes = 4096;
    c.server.max_messages = 8;
    c.exploration_rate = 0.0;
    c
}

pub fn engine(config: Config) -> Arc<Engine> {
    let store =
        ModelStore::with_featurizer(&config, featurizer(), &config.model.classifier).unwrap();
    Arc::new(Engine::new(Arc::new(config), store))
}

/// A server on 127.0.0.1:0; stops when the returned sender is dropped or fired.
pub struct Server {
    pub addr: std::net::SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Server {
    pub async fn start(config: Config) -> Self {
        Self::start_with(config, None).await
    }

    pub async fn start_with(
        config: Config,
        feedback: Option<Arc<triage::feedback::Feedback>>,
    ) -> Self {
        Self::start_full(config, feedback, None).await
    }

    pub async fn start_full(
        config: Config,
        feedback: Option<Arc<triage::feedback::Feedback>>,
        gateway: Option<Arc<triage::chain::Gateway>>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let engine = engine(config);
        tokio::spawn(async move {
            triage::server::serve(engine, feedback, gateway, listener, None, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self { addr, _stop: tx }
    }

    pub async fn channel(&self) -> tonic::transport::Channel {
        let url = format!("http://{}", self.addr);
        for _ in 0..50 {
            if let Ok(c) = tonic::transport::Endpoint::from_shared(url.clone())
                .unwrap()
                .connect()
                .await
            {
                return c;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("server at {url} did not accept connections");
    }

    pub async fn client(&self) -> RouterClient<tonic::transport::Channel> {
        RouterClient::new(self.channel().await)
    }
}

/// Both doors on loopback; the handle resolves when the server has stopped.
pub struct Doors {
    pub grpc: String,
    pub http: String,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub done: tokio::task::JoinHandle<Result<(), triage::server::ServeError>>,
}

pub async fn doors(
    c: triage::config::Config,
    fb: Option<Arc<triage::feedback::Feedback>>,
) -> Doors {
    let g = triage::chain::Gateway::from_config(&c)
        .unwrap()
        .map(Arc::new);
    let engine = crate::common::engine(c);
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (grpc_addr, http_addr) = (grpc.local_addr().unwrap(), http.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(triage::server::serve(
        engine,
        fb,
        g,
        grpc,
        Some(http),
        async {
            let _ = rx.await;
        },
    ));
    Doors {
        grpc: format!("http://{grpc_addr}"),
        http: format!("http://{http_addr}"),
        stop: Some(tx),
        done,
    }
}
