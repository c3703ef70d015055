//! Placement of variables on parameter-server shards.
//!
//! Every variable travels with its optimizer slots (`V/RMSProp`,
//! `V/RMSProp_1`, …: the slot handles of the `ResourceApply*` op that
//! updates `V`), so its bytes are the variable's plus its slots'. A
//! variable whose own bytes exceed the split threshold (default 4 MiB) is
//! split along dimension 0 into `min(ceil(bytes / threshold), shards,
//! rows)` parts named `V/part_0`, `V/part_1`, … (row ranges recorded; the
//! first `rows % parts` parts get one extra row, as TensorFlow's
//! partitioned variables); with one shard nothing is split, since a part
//! could only land where the whole would.
//!
//! Then greedy byte balancing: whole variables and parts, largest first
//! (ties by name, then part index), each to the shard holding the fewest
//! bytes so far (ties to the lower index); parts of one variable go to
//! distinct shards. Deterministic: the same variables give the same
//! placement.

use std::collections::BTreeMap;
use std::ops::Range;

use psflow_graph::{DType, Graph};
use serde::{Deserialize, Serialize};

use crate::partition::{Error, Result};

/// 4 MiB: variables above this are split across shards.
pub const DEFAULT_SPLIT_THRESHOLD: u64 = 4 << 20;

/// One variable of the graph with the slot variables that go with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Variable {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Optimizer slot variables (same dtype and shape), e.g. `V/RMSProp`.
    pub slots: Vec<String>,
}

impl Variable {
    /// The variable's own bytes.
    pub fn bytes(&self) -> u64 {
        (self.shape.iter().product::<usize>() * self.dtype.size()) as u64
    }

    /// The variable's and its slots' bytes.
    pub fn group_bytes(&self) -> u64 {
        self.bytes() * (1 + self.slots.len() as u64)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PlacementConfig {
    pub shards: usize,
    /// Variables of more bytes than this are split along dimension 0.
    pub split_threshold: u64,
}

impl PlacementConfig {
    pub fn new(shards: usize) -> PlacementConfig {
        PlacementConfig {
            shards,
            split_threshold: DEFAULT_SPLIT_THRESHOLD,
        }
    }
}

/// A part of a split variable: rows `rows` of dimension 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub index: usize,
    pub rows: Range<usize>,
}

/// A variable, or a part of one, on a shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlacedVar {
    /// The variable's name (`V`, also for its parts).
    pub name: String,
    pub part: Option<Part>,
    /// With the slots.
    pub bytes: u64,
}

impl PlacedVar {
    /// The name the shard stores it under: `V` or `V/part_i`.
    pub fn stored_name(&self) -> String {
        stored_name(&self.name, self.part.as_ref())
    }
}

/// `V` for a whole variable, `V/part_i` for a part.
pub fn stored_name(var: &str, part: Option<&Part>) -> String {
    match part {
        None => var.to_string(),
        Some(p) => format!("{var}/part_{}", p.index),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardAssignment {
    pub vars: Vec<PlacedVar>,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    pub shards: Vec<ShardAssignment>,
}

impl Placement {
    /// The shard and placed entry of a variable's part (None: whole).
    pub fn locate(&self, var: &str, part: Option<usize>) -> Option<(usize, &PlacedVar)> {
        self.shards.iter().enumerate().find_map(|(s, a)| {
            a.vars
                .iter()
                .find(|v| v.name == var && v.part.as_ref().map(|p| p.index) == part)
                .map(|v| (s, v))
        })
    }

    /// The parts of a split variable in index order (empty when whole).
    pub fn parts(&self, var: &str) -> Vec<Part> {
        let mut parts: Vec<Part> = self
            .shards
            .iter()
            .flat_map(|a| &a.vars)
            .filter(|v| v.name == var)
            .filter_map(|v| v.part.clone())
            .collect();
        parts.sort_by_key(|p| p.index);
        parts
    }

    /// Largest shard bytes over smallest (1.0 is perfect; infinite when a
    /// shard is empty and another is not).
    pub fn imbalance(&self) -> f64 {
        let max = self.shards.iter().map(|s| s.bytes).max().unwrap_or(0);
        let min = self.shards.iter().map(|s| s.bytes).min().unwrap_or(0);
        match (max, min) {
            (0, _) => 1.0,
            (_, 0) => f64::INFINITY,
            (a, b) => a as f64 / b as f64,
        }
    }
}

/// Places `vars` on `cfg.shards` shards (see the module docs).
pub fn place(vars: &[Variable], cfg: &PlacementConfig) -> Result<Placement> {
    if cfg.shards == 0 {
        return Err(Error::Placement(
            "the number of parameter-server shards must be at least 1".into(),
        ));
    }
    if cfg.split_threshold == 0 {
        return Err(Error::Placement(
            "the split threshold must be at least 1 byte".into(),
        ));
    }
    let mut seen = BTreeMap::new();
    for v in vars {
        if seen.insert(v.name.as_str(), ()).is_some() {
            return Err(Error::Placement(format!(
                "variable {:?} is listed twice",
                v.name
            )));
        }
    }
    // Items: whole variables and parts.
    let mut items: Vec<PlacedVar> = Vec::new();
    for v in vars {
        let rows = v.shape.first().copied().unwrap_or(1);
        let wanted = v.bytes().div_ceil(cfg.split_threshold) as usize;
        let parts = wanted.min(cfg.shards).min(rows);
        if parts < 2 {
            items.push(PlacedVar {
                name: v.name.clone(),
                part: None,
                bytes: v.group_bytes(),
            });
            continue;
        }
        let row_bytes = v.group_bytes() / rows as u64;
        let (base, extra) = (rows / parts, rows % parts);
        let mut start = 0;
        for index in 0..parts {
            let n = base + usize::from(index < extra);
            items.push(PlacedVar {
                name: v.name.clone(),
                part: Some(Part {
                    index,
                    rows: start..start + n,
                }),
                bytes: row_bytes * n as u64,
            });
            start += n;
        }
    }
    items.sort_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then_with(|| a.name.cmp(&b.name))
            .then_with(|| part_index(a).cmp(&part_index(b)))
    });
    let mut shards = vec![ShardAssignment::default(); cfg.shards];
    for item in items {
        let holds_part =
            |s: &ShardAssignment| item.part.is_some() && s.vars.iter().any(|v| v.name == item.name);
        let (best, _) = shards
            .iter()
            .enumerate()
            .filter(|(_, s)| !holds_part(s))
            .min_by_key(|(i, s)| (s.bytes, *i))
            .expect("a variable has at most `shards` parts");
        shards[best].bytes += item.bytes;
        shards[best].vars.push(item);
    }
    Ok(Placement { shards })
}

fn part_index(v: &PlacedVar) -> usize {
    v.part.as_ref().map_or(0, |p| p.index)
}

/// The variables of a graph (every `VarHandleOp`), each with the slot
/// variables of the `ResourceApply*` op that updates it; slots are not
/// listed on their own. A variable of unknown shape is an error.
pub fn variables_of(graph: &Graph) -> Result<Vec<Variable>> {
    let handles = crate::partition::training::handles(graph)?;
    let mut slots: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut is_slot = BTreeMap::new();
    for n in graph.nodes() {
        let Some(spec) = crate::partition::training::apply_spec(&n.op) else {
            continue;
        };
        let ins: Vec<_> = n.data_inputs().collect();
        let var_of = |i: usize| handles.get(&ins[i].node).cloned();
        let Some(var) = var_of(0) else { continue };
        for i in 1..spec.vars {
            if let Some(s) = var_of(i) {
                is_slot.insert(s.clone(), ());
                slots.entry(var.clone()).or_default().push(s);
            }
        }
    }
    let mut out = Vec::new();
    for n in graph.nodes().iter().filter(|n| n.op == "VarHandleOp") {
        if is_slot.contains_key(&n.name) {
            continue;
        }
        let dtype = n.attr_dtype("dtype")?;
        let shape = n.attr_shape_or_unknown("shape")?;
        let shape = shape.concrete().ok_or_else(|| Error::InvalidGraph {
            node: n.name.clone(),
            detail: format!("variable of shape {shape}: placement needs every variable's shape"),
        })?;
        out.push(Variable {
            name: n.name.clone(),
            dtype,
            shape,
            slots: slots.remove(&n.name).unwrap_or_default(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(name: &str, shape: &[usize], slots: usize) -> Variable {
        Variable {
            name: name.into(),
            dtype: DType::F32,
            shape: shape.to_vec(),
            slots: (0..slots).map(|i| format!("{name}/slot_{i}")).collect(),
        }
    }

    #[test]
    fn balances_many_variables_closely() {
        // MobileNet-like spread of sizes.
        let vars: Vec<Variable> = (0..60)
            .map(|i| {
                var(
                    &format!("v{i}"),
                    &[3, 3, 8 * (i % 7 + 1), 16 * (i % 5 + 1)],
                    2,
                )
            })
            .collect();
        for shards in [2, 3, 4] {
            let p = place(&vars, &PlacementConfig::new(shards)).unwrap();
            assert_eq!(p.shards.len(), shards);
            let total: u64 = p.shards.iter().map(|s| s.bytes).sum();
            assert_eq!(total, vars.iter().map(Variable::group_bytes).sum::<u64>());
            assert!(p.imbalance() < 1.05, "{shards} shards: {}", p.imbalance());
            let placed: usize = p.shards.iter().map(|s| s.vars.len()).sum();
            assert_eq!(placed, 60);
        }
    }

    #[test]
    fn greedy_is_largest_first_to_the_lightest_shard() {
        let vars = [
            var("a", &[10], 0),
            var("b", &[7], 0),
            var("c", &[5], 0),
            var("d", &[4], 0),
        ];
        let p = place(&vars, &PlacementConfig::new(2)).unwrap();
        let names: Vec<Vec<&str>> = p
            .shards
            .iter()
            .map(|s| s.vars.iter().map(|v| v.name.as_str()).collect())
            .collect();
        assert_eq!(names, vec![vec!["a", "d"], vec!["b", "c"]]);
        assert_eq!((p.shards[0].bytes, p.shards[1].bytes), (56, 48));
    }

    #[test]
    fn large_variables_split_along_rows_across_shards() {
        // 1001 x 2048 f32 = 8,200,192 bytes: over 4 MiB, 2 parts wanted;
        // with 3 shards the parts land on distinct shards.
        let big = var("emb", &[1001, 2048], 2);
        let small = var("b", &[10], 2);
        let p = place(&[big.clone(), small], &PlacementConfig::new(3)).unwrap();
        let parts = p.parts("emb");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].rows, 0..501);
        assert_eq!(parts[1].rows, 501..1001);
        let (s0, _) = p.locate("emb", Some(0)).unwrap();
        let (s1, _) = p.locate("emb", Some(1)).unwrap();
        assert_ne!(s0, s1);
        assert_eq!(
            p.locate("emb", Some(0)).unwrap().1.stored_name(),
            "emb/part_0"
        );
        let total: u64 = p.shards.iter().map(|s| s.bytes).sum();
        assert_eq!(total, big.group_bytes() + 120);

        // A lower threshold gives more parts, never more than the shards.
        let cfg = PlacementConfig {
            shards: 3,
            split_threshold: 1 << 20,
        };
        assert_eq!(
            place(std::slice::from_ref(&big), &cfg)
                .unwrap()
                .parts("emb")
                .len(),
            3
        );
        // One shard: nothing to spread over.
        assert!(place(&[big], &PlacementConfig::new(1))
            .unwrap()
            .parts("emb")
            .is_empty());
        // Never more parts than rows.
        let tall = var("t", &[2, 4 << 20], 0);
        assert_eq!(place(&[tall], &cfg).unwrap().parts("t").len(), 2);
    }

    #[test]
    fn placement_is_deterministic_and_serializable() {
        let vars: Vec<Variable> = (0..30)
            .map(|i| var(&format!("v{i}"), &[(i * 37) % 11 + 1, 64], 1))
            .collect();
        let mut shuffled = vars.clone();
        shuffled.reverse();
        let cfg = PlacementConfig::new(3);
        let a = place(&vars, &cfg).unwrap();
        assert_eq!(a, place(&vars, &cfg).unwrap());
        assert_eq!(a, place(&shuffled, &cfg).unwrap());
        let json = serde_json::to_string(&a).unwrap();
        let back: Placement = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn bad_configurations_are_errors() {
        let e = place(&[var("a", &[1], 0)], &PlacementConfig::new(0)).unwrap_err();
        assert!(e.to_string().contains("at least 1"), "{e}");
        let e = place(
            &[var("a", &[1], 0), var("a", &[2], 0)],
            &PlacementConfig::new(1),
        )
        .unwrap_err();
        assert!(e.to_string().contains("\"a\""), "{e}");
    }
}
