//! The store's on-disk layout: binary keys that sort by time, compact versioned records with
//! quantized features, and the reader for the JSON records of the first layout.

use std::collections::BTreeMap;

use half::f16;
use serde::{Deserialize, Serialize};

use super::store::{DecisionRecord, KnobsRecord, OutcomeRecord};

/// First byte of the outcome records of this layout and of the decision records of the second
/// (the first layout's records are JSON and start with `{`).
pub const RECORD_V2: u8 = 2;
/// First byte of the decision records written now: the second layout's fields with the
/// features of [`PackedFeatures`].
pub const RECORD_V3: u8 = 3;

/// Key class of a UUIDv7 decision id: 16 bytes follow, so keys sort by decision time.
pub const KEY_UUID_V7: u8 = 1;
/// Key class of any other id: a two-byte length and the id's text follow.
pub const KEY_TEXT: u8 = 2;

/// Why a stored record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// A binary record is malformed.
    #[error("binary record: {0}")]
    Binary(#[from] postcard::Error),
    /// A JSON record of the first layout is malformed.
    #[error("JSON record: {0}")]
    Json(#[from] serde_json::Error),
    /// The record names a context (model, tiers, schema) the store does not hold.
    #[error("record names context {0}, which is not in the store")]
    UnknownContext(u32),
    /// The record's version byte is unknown: written by a newer triage.
    #[error("record version {0} is unknown (written by a newer triage?)")]
    Version(u8),
    /// An empty value.
    #[error("empty record")]
    Empty,
    /// A binary record whose parts contradict each other.
    #[error("malformed record: {0}")]
    Malformed(&'static str),
}

/// The store key of a decision id. Ids longer than 65,535 bytes cannot be stored (the server
/// makes UUIDs; outcome ids are validated as UUIDs).
pub fn decision_key(id: &str) -> Vec<u8> {
    // Canonical text only (lower-case, hyphenated), compared on the stack: this runs for every
    // logged decision.
    let mut canonical = [0u8; uuid::fmt::Hyphenated::LENGTH];
    match uuid::Uuid::parse_str(id) {
        Ok(u)
            if u.get_version_num() == 7
                && u.hyphenated().encode_lower(&mut canonical).as_bytes() == id.as_bytes() =>
        {
            let mut k = Vec::with_capacity(17);
            k.push(KEY_UUID_V7);
            k.extend_from_slice(u.as_bytes());
            k
        }
        _ => {
            let text = &id.as_bytes()[..id.len().min(usize::from(u16::MAX))];
            let mut k = Vec::with_capacity(3 + text.len());
            k.push(KEY_TEXT);
            k.extend_from_slice(&u16::try_from(text.len()).unwrap_or(u16::MAX).to_be_bytes());
            k.extend_from_slice(text);
            k
        }
    }
}

/// The store key of an outcome: its decision's key, then the source.
pub fn outcome_key(decision_id: &str, source: &str) -> Vec<u8> {
    let mut k = decision_key(decision_id);
    k.extend_from_slice(source.as_bytes());
    k
}

/// Splits an outcome key into its decision id and source.
pub fn split_outcome_key(key: &[u8]) -> Option<(String, String)> {
    let (id, rest) = match *key.first()? {
        KEY_UUID_V7 => {
            let bytes: [u8; 16] = key.get(1..17)?.try_into().ok()?;
            (uuid::Uuid::from_bytes(bytes).to_string(), key.get(17..)?)
        }
        KEY_TEXT => {
            let len = usize::from(u16::from_be_bytes(key.get(1..3)?.try_into().ok()?));
            let id = std::str::from_utf8(key.get(3..3 + len)?).ok()?;
            (id.to_string(), key.get(3 + len..)?)
        }
        _ => return None,
    };
    Some((id, std::str::from_utf8(rest).ok()?.to_string()))
}

/// The first key of UUIDv7 decisions made at or after `ms` (older ones sort before it).
pub fn time_key(ms: u64) -> Vec<u8> {
    let mut k = vec![KEY_UUID_V7];
    k.extend_from_slice(&ms.to_be_bytes()[2..]);
    k
}

/// The end of the UUIDv7 key range; text-keyed decisions sort after it.
pub fn text_keys_start() -> Vec<u8> {
    vec![KEY_TEXT]
}

/// What many decisions share: interned once per store, named by a number in each record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Context {
    /// Model that decided.
    pub model_version: String,
    /// Tier names, cheapest first.
    pub tiers: Vec<String>,
    /// Fingerprint of the feature schema.
    pub schema_fingerprint: String,
}

impl Context {
    /// Whether `d` was decided in this context.
    pub fn is_of(&self, d: &DecisionRecord) -> bool {
        self.model_version == d.model_version
            && self.tiers == d.tiers
            && self.schema_fingerprint == d.schema_fingerprint
    }
}

/// A feature vector as written by this layout: the hand-made features as half floats (markers
/// are exact, ratios and logs keep three digits), zeros left out behind a bitmap (most markers
/// are 0 on any one prompt), and the embedding as signed 4-bit steps of one scale per vector,
/// two to a byte. Four bits rather than eight: the embedding is most of a record, sled's
/// layout roughly doubles every stored byte, and a logistic head trained on logged vectors
/// gives the same routing from either (`examples/replay.rs`, docs/feedback-loop.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PackedFeatures {
    dense_len: u32,
    /// Bit `i % 8` of byte `i / 8` set: dense feature `i` is not zero and is next in `dense`.
    nonzero: Vec<u8>,
    dense: Vec<u16>,
    scale: f32,
    embedding_len: u32,
    /// Low nibble first.
    embedding: Vec<u8>,
}

/// Largest 4-bit step stored (the range is symmetric, so -8 is never written).
const NIBBLE_MAX: i32 = 7;

impl PackedFeatures {
    fn pack(v: &[f32], embedding_dim: usize) -> Self {
        let split = v.len().saturating_sub(embedding_dim);
        let (dense, emb) = v.split_at(split);
        let mut nonzero = vec![0u8; dense.len().div_ceil(8)];
        let mut kept = Vec::with_capacity(dense.len());
        for (i, &x) in dense.iter().enumerate() {
            if x != 0.0 {
                nonzero[i / 8] |= 1 << (i % 8);
                kept.push(f16::from_f32(x).to_bits());
            }
        }
        let scale = embedding_scale(emb, NIBBLE_MAX);
        let inv = 1.0 / scale;
        #[allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)]
        let nibble = |x: f32| (quantize(x * inv, NIBBLE_MAX) as u8) & 0x0f;
        let embedding = emb
            .chunks(2)
            .map(|pair| nibble(pair[0]) | pair.get(1).map_or(0, |&x| nibble(x) << 4))
            .collect();
        Self {
            dense_len: u32::try_from(dense.len()).unwrap_or(u32::MAX),
            nonzero,
            dense: kept,
            scale,
            embedding_len: u32::try_from(emb.len()).unwrap_or(u32::MAX),
            embedding,
        }
    }

    /// The vector, or an error when the parts disagree with the lengths (a corrupt record,
    /// refused before its lengths can size anything).
    fn unpack(&self) -> Result<Vec<f32>, CodecError> {
        let dense_len = usize::try_from(self.dense_len).unwrap_or(usize::MAX);
        let emb_len = usize::try_from(self.embedding_len).unwrap_or(usize::MAX);
        let set: usize = self.nonzero.iter().map(|b| b.count_ones() as usize).sum();
        if self.nonzero.len() != dense_len.div_ceil(8)
            || set != self.dense.len()
            || self.embedding.len() != emb_len.div_ceil(2)
        {
            return Err(CodecError::Malformed(
                "feature lengths disagree with the stored parts",
            ));
        }
        let mut out = Vec::with_capacity(dense_len + emb_len);
        let mut values = self.dense.iter();
        for i in 0..dense_len {
            let set = self.nonzero[i / 8] & (1 << (i % 8)) != 0;
            // The counts were checked above, so a set bit always has its value.
            let value = if set { values.next() } else { None };
            out.push(value.map_or(0.0, |&b| f16::from_bits(b).to_f32()));
        }
        for i in 0..emb_len {
            let byte = self.embedding[i / 2];
            let n = if i % 2 == 0 { byte << 4 } else { byte & 0xf0 };
            // The nibble in the high half of an i8, shifted back down with its sign.
            #[allow(clippy::cast_possible_wrap)]
            let q = (n as i8) >> 4;
            out.push(f32::from(q) * self.scale);
        }
        Ok(out)
    }
}

/// The second layout's feature vector (read only): half floats, then the embedding as int8.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PackedFeaturesV2 {
    dense: Vec<u16>,
    scale: f32,
    embedding: Vec<i8>,
}

impl PackedFeaturesV2 {
    #[cfg(test)]
    fn pack(v: &[f32], embedding_dim: usize) -> Self {
        let split = v.len().saturating_sub(embedding_dim);
        let (dense, emb) = v.split_at(split);
        let scale = embedding_scale(emb, 127);
        let inv = 1.0 / scale;
        #[allow(clippy::cast_possible_truncation)]
        Self {
            dense: dense.iter().map(|&x| f16::from_f32(x).to_bits()).collect(),
            scale,
            embedding: emb.iter().map(|&x| quantize(x * inv, 127) as i8).collect(),
        }
    }

    fn unpack(&self) -> Vec<f32> {
        self.dense
            .iter()
            .map(|&b| f16::from_bits(b).to_f32())
            .chain(self.embedding.iter().map(|&q| f32::from(q) * self.scale))
            .collect()
    }
}

/// The scale that maps the largest finite magnitude of `emb` to `steps` (1 for an empty,
/// all-zero or non-finite vector, so nothing divides by zero).
fn embedding_scale(emb: &[f32], steps: i32) -> f32 {
    let max = emb.iter().fold(0f32, |m, x| m.max(x.abs()));
    #[allow(clippy::cast_precision_loss)]
    if max > 0.0 && max.is_finite() {
        max / steps as f32
    } else {
        1.0
    }
}

/// `y` rounded half away from zero into [-limit, limit] (NaN: 0). By hand because `f32::round`
/// is a libm call on baseline x86-64, once per embedding element of every logged decision.
#[allow(clippy::cast_possible_truncation)]
fn quantize(y: f32, limit: i32) -> i32 {
    let r = if y >= 0.0 { y + 0.5 } else { y - 0.5 };
    // `as` saturates and maps NaN to 0.
    (r as i32).clamp(-limit, limit)
}

/// Lowercase hexadecimal of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 * bytes.len());
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// A SHA-256 kept as its 32 bytes when it is one (always, when the server wrote it).
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Digest {
    Bytes([u8; 32]),
    Text(String),
}

impl Digest {
    fn pack(hex: &str) -> Self {
        let bytes: Option<Vec<u8>> = (hex.len() == 64)
            .then(|| {
                (0..32)
                    .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
                    .collect()
            })
            .flatten();
        match bytes.and_then(|b| <[u8; 32]>::try_from(b).ok()) {
            // Only lowercase hex round-trips to the same text.
            Some(b) if hex.bytes().all(|c| !c.is_ascii_uppercase()) => Self::Bytes(b),
            _ => Self::Text(hex.to_string()),
        }
    }

    fn unpack(&self) -> String {
        match self {
            Self::Bytes(b) => hex(b),
            Self::Text(t) => t.clone(),
        }
    }
}

/// A decision as stored; the id is the key, model, tiers and schema are a context number. `F`
/// is the layout's feature vector (the only field that changed from the second to the third).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DiskDecision<F> {
    context: u32,
    time_unix_ms: u64,
    /// Index of the chosen tier in the context's tiers, or its name when it is not there.
    tier: Result<u8, String>,
    p_sufficient: Vec<f32>,
    propensity: f32,
    knobs: DiskKnobs,
    tenant: Option<String>,
    labels: BTreeMap<String, String>,
    features: F,
    prompt_tokens: u32,
    context_tokens: u32,
    estimated_cost_usd: f64,
    prompt_sha256: Digest,
    prompt: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DiskKnobs {
    min_tier: Option<String>,
    max_tier: Option<String>,
    max_cost_usd: Option<f64>,
    latency_sensitive: bool,
    quality_target: Option<f64>,
}

/// An outcome as stored; the decision id and source are the key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DiskOutcome {
    success: Option<bool>,
    quality: Option<f64>,
    latency_ms: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cost_usd: Option<f64>,
    error_class: Option<String>,
    labels: BTreeMap<String, String>,
    observed_at_unix_ms: i64,
    recorded_at_unix_ms: u64,
    orphan: bool,
}

fn versioned<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    // Serialized after the version byte in place (no second copy). Serializing these plain
    // structs into a Vec cannot fail; a record of the version byte alone would be refused on
    // reading rather than misread.
    postcard::to_extend(value, vec![version]).unwrap_or_else(|_| vec![version])
}

/// Encodes a decision given its context number.
pub fn encode_decision(d: &DecisionRecord, context: u32, embedding_dim: usize) -> Vec<u8> {
    let tier = d
        .tiers
        .iter()
        .position(|t| *t == d.tier)
        .and_then(|i| u8::try_from(i).ok())
        .ok_or_else(|| d.tier.clone());
    // The probabilities and propensity are stored as f32: seven digits are more than a
    // calibrated probability carries.
    #[allow(clippy::cast_possible_truncation)]
    let disk = DiskDecision {
        context,
        time_unix_ms: d.time_unix_ms,
        tier,
        p_sufficient: d.p_sufficient.iter().map(|&p| p as f32).collect(),
        propensity: d.propensity as f32,
        knobs: DiskKnobs {
            min_tier: d.knobs.min_tier.clone(),
            max_tier: d.knobs.max_tier.clone(),
            max_cost_usd: d.knobs.max_cost_usd,
            latency_sensitive: d.knobs.latency_sensitive,
            quality_target: d.knobs.quality_target,
        },
        tenant: d.tenant.clone(),
        labels: d.labels.clone(),
        features: PackedFeatures::pack(&d.features, embedding_dim),
        prompt_tokens: d.prompt_tokens,
        context_tokens: d.context_tokens,
        estimated_cost_usd: d.estimated_cost_usd,
        prompt_sha256: Digest::pack(&d.prompt_sha256),
        prompt: d.prompt.clone(),
    };
    versioned(RECORD_V3, &disk)
}

/// Decodes a stored decision value of either layout; `contexts` resolves context numbers.
pub fn decode_decision(
    key_id: impl FnOnce() -> String,
    value: &[u8],
    contexts: &[Context],
) -> Result<DecisionRecord, CodecError> {
    match value.first() {
        None => Err(CodecError::Empty),
        Some(b'{') => Ok(serde_json::from_slice(value)?),
        Some(&RECORD_V2) => {
            let d: DiskDecision<PackedFeaturesV2> = postcard::from_bytes(&value[1..])?;
            let features = d.features.unpack();
            from_disk(key_id, d, features, contexts)
        }
        Some(&RECORD_V3) => {
            let d: DiskDecision<PackedFeatures> = postcard::from_bytes(&value[1..])?;
            let features = d.features.unpack()?;
            from_disk(key_id, d, features, contexts)
        }
        Some(&v) => Err(CodecError::Version(v)),
    }
}

/// A stored decision of either binary layout, its features already unpacked.
fn from_disk<F>(
    key_id: impl FnOnce() -> String,
    d: DiskDecision<F>,
    features: Vec<f32>,
    contexts: &[Context],
) -> Result<DecisionRecord, CodecError> {
    let c = usize::try_from(d.context)
        .ok()
        .and_then(|i| contexts.get(i))
        .ok_or(CodecError::UnknownContext(d.context))?;
    let tier = match d.tier {
        Ok(i) => c.tiers.get(usize::from(i)).cloned().unwrap_or_default(),
        Err(name) => name,
    };
    Ok(DecisionRecord {
        decision_id: key_id(),
        time_unix_ms: d.time_unix_ms,
        model_version: c.model_version.clone(),
        tiers: c.tiers.clone(),
        tier,
        p_sufficient: d.p_sufficient.iter().map(|&p| widen(p)).collect(),
        propensity: widen(d.propensity),
        schema_fingerprint: c.schema_fingerprint.clone(),
        knobs: KnobsRecord {
            min_tier: d.knobs.min_tier,
            max_tier: d.knobs.max_tier,
            max_cost_usd: d.knobs.max_cost_usd,
            latency_sensitive: d.knobs.latency_sensitive,
            quality_target: d.knobs.quality_target,
        },
        tenant: d.tenant,
        labels: d.labels,
        features,
        prompt_tokens: d.prompt_tokens,
        context_tokens: d.context_tokens,
        estimated_cost_usd: d.estimated_cost_usd,
        prompt_sha256: d.prompt_sha256.unpack(),
        prompt: d.prompt,
    })
}

/// The f64 nearest the f32's shortest decimal form, so 0.7 stored as f32 reads back as 0.7
/// rather than 0.699999988.
fn widen(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

/// The id of a decision key.
pub fn key_decision_id(key: &[u8]) -> Option<String> {
    split_outcome_key(key).map(|(id, _)| id)
}

/// Decodes a decision's time without decoding the rest (retention and export scans).
pub fn decision_time(value: &[u8]) -> Result<u64, CodecError> {
    #[derive(Deserialize)]
    struct Head {
        _context: u32,
        time_unix_ms: u64,
    }
    #[derive(Deserialize)]
    struct JsonHead {
        time_unix_ms: u64,
    }
    match value.first() {
        None => Err(CodecError::Empty),
        Some(b'{') => Ok(serde_json::from_slice::<JsonHead>(value)?.time_unix_ms),
        // Both binary layouts start with the context and the time.
        Some(&(RECORD_V2 | RECORD_V3)) => Ok(postcard::take_from_bytes::<Head>(&value[1..])?
            .0
            .time_unix_ms),
        Some(&v) => Err(CodecError::Version(v)),
    }
}

/// Encodes an outcome (its id and source are the key).
pub fn encode_outcome(o: &OutcomeRecord) -> Vec<u8> {
    let disk = DiskOutcome {
        success: o.success,
        quality: o.quality,
        latency_ms: o.latency_ms,
        input_tokens: o.input_tokens,
        output_tokens: o.output_tokens,
        cost_usd: o.cost_usd,
        error_class: o.error_class.clone(),
        labels: o.labels.clone(),
        observed_at_unix_ms: o.observed_at_unix_ms,
        recorded_at_unix_ms: o.recorded_at_unix_ms,
        orphan: o.orphan,
    };
    versioned(RECORD_V2, &disk)
}

/// Decodes a stored outcome of either layout.
pub fn decode_outcome(key: &[u8], value: &[u8]) -> Result<OutcomeRecord, CodecError> {
    match value.first() {
        None => Err(CodecError::Empty),
        Some(b'{') => Ok(serde_json::from_slice(value)?),
        Some(&RECORD_V2) => {
            let o: DiskOutcome = postcard::from_bytes(&value[1..])?;
            let (decision_id, source) = split_outcome_key(key).unwrap_or_default();
            Ok(OutcomeRecord {
                decision_id,
                source,
                success: o.success,
                quality: o.quality,
                latency_ms: o.latency_ms,
                input_tokens: o.input_tokens,
                output_tokens: o.output_tokens,
                cost_usd: o.cost_usd,
                error_class: o.error_class,
                labels: o.labels,
                observed_at_unix_ms: o.observed_at_unix_ms,
                recorded_at_unix_ms: o.recorded_at_unix_ms,
                orphan: o.orphan,
            })
        }
        Some(&v) => Err(CodecError::Version(v)),
    }
}

#[cfg(test)]
mod tests;
