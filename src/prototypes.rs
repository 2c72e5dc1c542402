//! Topic prototypes: soft membership of a prompt's embedding in k-means clusters, appended to the
//! feature vector so linear heads can learn per-topic difficulty.

use rand::SeedableRng;
use rand::distributions::{Distribution, WeightedIndex};
use serde::{Deserialize, Serialize};

/// Cluster centres over the embedding slice of the feature vector, stored in the model file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Prototypes {
    /// Index of the first embedding element in the base feature vector.
    pub offset: usize,
    /// Unit-length centres, all of the embedding's length.
    pub centroids: Vec<Vec<f32>>,
    /// Softmax temperature over the scores; smaller is closer to one-hot.
    pub temperature: f32,
    /// Base features multiplied by every membership (appended after the memberships), so a
    /// topic can have its own slope: "within maths word problems, longer is harder".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interact: Vec<usize>,
}

impl Prototypes {
    /// Number of features this adds.
    pub fn len(&self) -> usize {
        self.centroids.len() * (1 + self.interact.len())
    }

    /// Whether there are no prototypes.
    pub fn is_empty(&self) -> bool {
        self.centroids.is_empty()
    }

    /// Writes softmax(centre · embedding / temperature) for every centre into `out`.
    /// Embeddings are unit length (or zero), so for unit centres the dot product is the cosine.
    pub fn memberships_into(&self, base: &[f32], out: &mut [f32]) {
        let dim = self.centroids.first().map_or(0, Vec::len);
        let Some(emb) = base.get(self.offset..self.offset + dim) else {
            out.fill(0.0);
            return;
        };
        let inv_t = 1.0 / self.temperature;
        let mut max = f32::NEG_INFINITY;
        for (o, c) in out.iter_mut().zip(&self.centroids) {
            *o = dot(c, emb) * inv_t;
            max = max.max(*o);
        }
        let mut sum = 0.0;
        for o in out.iter_mut() {
            *o = (*o - max).exp();
            sum += *o;
        }
        if sum > 0.0 {
            out.iter_mut().for_each(|o| *o /= sum);
        }
    }

    /// The base vector followed by its memberships.
    pub fn expand(&self, base: &[f32]) -> Vec<f32> {
        let mut v = Vec::with_capacity(base.len() + self.len());
        v.extend_from_slice(base);
        v.resize(base.len() + self.len(), 0.0);
        let k = self.centroids.len();
        let (b, m) = v.split_at_mut(base.len());
        let (members, products) = m.split_at_mut(k);
        self.memberships_into(b, members);
        for (chunk, &i) in products.chunks_mut(k).zip(&self.interact) {
            let x = b.get(i).copied().unwrap_or(0.0);
            for (o, mk) in chunk.iter_mut().zip(members.iter()) {
                *o = mk * x;
            }
        }
        v
    }
}

fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 1e-12 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// Dot product over the common length, in eight independent lanes so the compiler can
/// vectorize it (a single running sum cannot be reordered, so it stays scalar).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut lanes = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + tail
}

/// Spherical k-means (cosine) with k-means++ seeding; reproducible for a seed.
pub fn kmeans(points: &[&[f32]], k: usize, iterations: usize, seed: u64) -> Vec<Vec<f32>> {
    let n = points.len();
    if n == 0 || k == 0 {
        return Vec::new();
    }
    let k = k.min(n);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut centroids: Vec<Vec<f32>> = vec![points[0].to_vec()];
    let mut dist: Vec<f32> = points
        .iter()
        .map(|p| (1.0 - dot(p, &centroids[0])).max(0.0))
        .collect();
    while centroids.len() < k {
        let next = match WeightedIndex::new(dist.iter().map(|d| d * d + 1e-12)) {
            Ok(w) => w.sample(&mut rng),
            Err(_) => centroids.len() % n,
        };
        let c = points[next].to_vec();
        for (d, p) in dist.iter_mut().zip(points) {
            *d = d.min((1.0 - dot(p, &c)).max(0.0));
        }
        centroids.push(c);
    }
    let dim = points[0].len();
    let mut assign = vec![0usize; n];
    for _ in 0..iterations {
        for (a, p) in assign.iter_mut().zip(points) {
            let mut best = (f32::NEG_INFINITY, 0);
            for (j, c) in centroids.iter().enumerate() {
                let s = dot(p, c);
                if s > best.0 {
                    best = (s, j);
                }
            }
            *a = best.1;
        }
        let mut sums = vec![vec![0.0f32; dim]; k];
        for (a, p) in assign.iter().zip(points) {
            for (s, v) in sums[*a].iter_mut().zip(p.iter()) {
                *s += v;
            }
        }
        for (c, s) in centroids.iter_mut().zip(sums) {
            if s.iter().any(|v| *v != 0.0) {
                *c = s;
            }
            normalize(c);
        }
    }
    centroids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_the_plain_sum_for_any_length() {
        for n in [0, 1, 7, 8, 9, 17, 256] {
            let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
            let b: Vec<f32> = (0..n).map(|i| 1.0 - i as f32 * 0.25).collect();
            let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!(
                (dot(&a, &b) - plain).abs() <= 1e-3 * plain.abs().max(1.0),
                "n={n}"
            );
        }
    }

    #[test]
    fn kmeans_separates_two_directions_reproducibly() {
        let pts: Vec<Vec<f32>> = (0..20)
            .map(|i| {
                if i % 2 == 0 {
                    vec![1.0, 0.01 * i as f32]
                } else {
                    vec![0.01 * i as f32, 1.0]
                }
            })
            .map(|mut v| {
                normalize(&mut v);
                v
            })
            .collect();
        let refs: Vec<&[f32]> = pts.iter().map(Vec::as_slice).collect();
        let a = kmeans(&refs, 2, 10, 3);
        assert_eq!(a, kmeans(&refs, 2, 10, 3));
        let mut firsts: Vec<bool> = a.iter().map(|c| c[0] > c[1]).collect();
        firsts.sort();
        assert_eq!(firsts, vec![false, true]);
    }

    #[test]
    fn memberships_are_a_softmax_over_cosines() {
        let p = Prototypes {
            offset: 1,
            centroids: vec![vec![1.0, 0.0], vec![0.0, 1.0]],
            temperature: 0.1,
            interact: vec![0],
        };
        let v = p.expand(&[9.0, 1.0, 0.0]);
        assert_eq!(v.len(), 7);
        assert!((v[5] - 9.0 * v[3]).abs() < 1e-5 && (v[6] - 9.0 * v[4]).abs() < 1e-5);
        assert_eq!(&v[..3], &[9.0, 1.0, 0.0]);
        let e = (10.0f32).exp();
        assert!(
            (v[3] - e / (e + 1.0)).abs() < 1e-5 && (v[3] + v[4] - 1.0).abs() < 1e-6,
            "{v:?}"
        );
        // A vector too short for the offset gives zeros, not a panic.
        assert_eq!(p.expand(&[1.0])[1..], [0.0; 4]);
    }
}
