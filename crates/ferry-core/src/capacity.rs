//! Capacity on the hosts: what a step needs (slots, GPUs, a place in a shared pool), what an
//! agent offers, and whether one fits the other. Pure: the engine keeps the counts and asks.
//!
//! Every agent declares `slots` (concurrent steps; `agent.slots`, by default its cores) and
//! its GPUs. A `train` step needs `gpu_count` GPUs (all of the agent's when absent), an
//! `infer` step the agent's devices, every step one slot; a step's `resources` override
//! either. A step is dispatched only where it fits, and is given concrete GPU ids.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::kinds;

/// The most slots one step may ask for, or one agent declare.
pub const MAX_SLOTS: u32 = 4096;
/// The most GPUs one step may ask for.
pub const MAX_GPUS: u32 = 1024;

/// A step's `resources`: what it needs beyond its kind's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Slots the step occupies on its agent while it runs (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
    /// GPUs the step needs (default: `gpu_count` of a `train` step, the agent's devices for
    /// `infer`, none otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
    /// A pool shared across workflows (`workflow.pools`): at most its size of steps in it run
    /// at once, wherever they run (e.g. exports against one Hive cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        self.slots.is_none() && self.gpus.is_none() && self.pool.is_none()
    }

    /// Checks the values; the error names the field (relative to the step).
    pub fn check(&self) -> Result<(), (String, String)> {
        if let Some(s) = self.slots
            && !(1..=MAX_SLOTS).contains(&s)
        {
            return Err((
                "resources.slots".into(),
                format!("must be between 1 and {MAX_SLOTS}, not {s}"),
            ));
        }
        if let Some(g) = self.gpus
            && g > MAX_GPUS
        {
            return Err((
                "resources.gpus".into(),
                format!("must be at most {MAX_GPUS}, not {g}"),
            ));
        }
        if let Some(p) = &self.pool
            && !is_pool_name(p)
        {
            return Err((
                "resources.pool".into(),
                format!("pool name `{p}` is invalid: use 1-50 letters, digits, `_` or `-`"),
            ));
        }
        Ok(())
    }

    /// Checks that the pool it names is configured (`workflow.pools`).
    pub fn check_pool(&self, pools: &BTreeMap<String, u32>) -> Result<(), (String, String)> {
        if let Some(p) = &self.pool
            && !pools.contains_key(p)
        {
            let known: Vec<&str> = pools.keys().map(String::as_str).collect();
            return Err((
                "resources.pool".into(),
                if known.is_empty() {
                    format!("unknown pool `{p}`: no pools are configured (workflow.pools)")
                } else {
                    format!("unknown pool `{p}` (configured: {})", known.join(", "))
                },
            ));
        }
        Ok(())
    }
}

/// What a pool name may be: 1-50 letters, digits, `_` or `-` (a step name's rule).
pub fn is_pool_name(s: &str) -> bool {
    crate::ident::is_plain_name(s, 50, &[])
}

/// How many GPUs a step needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GpuDemand {
    /// Exactly this many (0: none).
    Count(u32),
    /// Every GPU of the agent it runs on (none on an agent without GPUs).
    All,
}

/// What one step needs while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Demand {
    pub slots: u32,
    pub gpus: GpuDemand,
    pub pool: Option<String>,
}

impl Demand {
    /// What a step of `kind` with `params` (as stored, placeholders filled in) needs, with
    /// its `resources` override.
    pub fn of_step(kind: &str, params: &Value, resources: Option<&Resources>) -> Demand {
        let default_gpus = match kind {
            kinds::TRAIN => match params.get("gpu_count").and_then(Value::as_u64) {
                Some(n) => GpuDemand::Count(u32::try_from(n).unwrap_or(u32::MAX)),
                None => GpuDemand::All,
            },
            kinds::INFER => GpuDemand::All,
            _ => GpuDemand::Count(0),
        };
        let r = resources.cloned().unwrap_or_default();
        Demand {
            slots: r.slots.unwrap_or(1),
            gpus: r.gpus.map_or(default_gpus, GpuDemand::Count),
            pool: r.pool,
        }
    }

    /// GPUs this demand takes on an agent that has `gpus` of them.
    pub fn gpus_on(&self, gpus: usize) -> usize {
        match self.gpus {
            GpuDemand::Count(n) => n as usize,
            GpuDemand::All => gpus,
        }
    }
}

impl fmt::Display for Demand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} slot{}",
            self.slots,
            if self.slots == 1 { "" } else { "s" }
        )?;
        match self.gpus {
            GpuDemand::Count(0) => {}
            GpuDemand::Count(n) => write!(f, ", {n} GPU{}", if n == 1 { "" } else { "s" })?,
            GpuDemand::All => write!(f, ", all of the agent's GPUs")?,
        }
        if let Some(p) = &self.pool {
            write!(f, ", a place in pool {p}")?;
        }
        Ok(())
    }
}

/// What an agent offers: `slots` (0: not limited) and its GPU ids.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offer<'a> {
    pub slots: u32,
    pub gpus: &'a [u32],
}

/// What is taken on one agent right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub slots: u32,
    pub gpus: BTreeSet<u32>,
}

/// What a dispatched step holds until it ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    pub slots: u32,
    pub gpu_ids: Vec<u32>,
}

/// What a step asks an agent for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Slots,
    Gpus,
}

/// Why a step does not fit an agent now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shortfall {
    /// The agent could never run it: it has less of `Resource` than the step needs.
    Never(Resource, String),
    /// Not now: what is taken.
    Busy(String),
}

impl Shortfall {
    pub fn message(&self) -> &str {
        match self {
            Shortfall::Never(_, m) | Shortfall::Busy(m) => m,
        }
    }
}

/// Whether `demand` could ever run on an agent offering `offer`.
pub fn could_fit(offer: &Offer<'_>, demand: &Demand) -> Result<(), Shortfall> {
    if offer.slots > 0 && demand.slots > offer.slots {
        return Err(Shortfall::Never(
            Resource::Slots,
            format!(
                "needs {} slots; the agent has {}",
                demand.slots, offer.slots
            ),
        ));
    }
    let need = demand.gpus_on(offer.gpus.len());
    if need > offer.gpus.len() {
        return Err(Shortfall::Never(
            Resource::Gpus,
            format!("needs {need} GPUs; the agent has {}", offer.gpus.len()),
        ));
    }
    Ok(())
}

/// The grant `demand` gets on an agent offering `offer` with `usage` taken, or why not.
/// GPUs are the lowest free ids.
pub fn fit(offer: &Offer<'_>, usage: &Usage, demand: &Demand) -> Result<Grant, Shortfall> {
    could_fit(offer, demand)?;
    if offer.slots > 0 && usage.slots + demand.slots > offer.slots {
        return Err(Shortfall::Busy(format!(
            "{} of {} slots in use",
            usage.slots, offer.slots
        )));
    }
    let need = demand.gpus_on(offer.gpus.len());
    let free: Vec<u32> = offer
        .gpus
        .iter()
        .copied()
        .filter(|g| !usage.gpus.contains(g))
        .collect();
    if free.len() < need {
        return Err(Shortfall::Busy(format!(
            "{} of {} GPUs in use",
            offer.gpus.len() - free.len(),
            offer.gpus.len()
        )));
    }
    Ok(Grant {
        slots: demand.slots,
        gpu_ids: free[..need].to_vec(),
    })
}

impl Usage {
    pub fn take(&mut self, grant: &Grant) {
        self.slots += grant.slots;
        self.gpus.extend(grant.gpu_ids.iter().copied());
    }

    pub fn release(&mut self, grant: &Grant) {
        self.slots = self.slots.saturating_sub(grant.slots);
        for g in &grant.gpu_ids {
            self.gpus.remove(g);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn offer(slots: u32, gpus: &[u32]) -> Offer<'_> {
        Offer { slots, gpus }
    }

    #[test]
    fn kinds_ask_for_their_defaults_and_resources_override_them() {
        let train = Demand::of_step("train", &json!({"gpu_count": 2}), None);
        assert_eq!((train.slots, train.gpus), (1, GpuDemand::Count(2)));
        let all = Demand::of_step("train", &json!({}), None);
        assert_eq!(all.gpus, GpuDemand::All);
        assert_eq!(
            Demand::of_step("infer", &json!({}), None).gpus,
            GpuDemand::All
        );
        let exec = Demand::of_step("exec", &json!({}), None);
        assert_eq!((exec.slots, exec.gpus), (1, GpuDemand::Count(0)));
        let r = Resources {
            slots: Some(3),
            gpus: Some(1),
            pool: Some("hive".into()),
        };
        let over = Demand::of_step("exec", &json!({}), Some(&r));
        assert_eq!(
            (over.slots, over.gpus, over.pool.as_deref()),
            (3, GpuDemand::Count(1), Some("hive"))
        );
        assert_eq!(over.to_string(), "3 slots, 1 GPU, a place in pool hive");
    }

    #[test]
    fn grants_take_the_lowest_free_gpus_and_never_share_one() {
        let o = offer(2, &[0, 1]);
        let one = Demand::of_step("train", &json!({"gpu_count": 1}), None);
        let mut usage = Usage::default();
        let a = fit(&o, &usage, &one).expect("fits");
        assert_eq!(a.gpu_ids, vec![0]);
        usage.take(&a);
        let b = fit(&o, &usage, &one).expect("fits");
        assert_eq!(b.gpu_ids, vec![1]);
        usage.take(&b);
        let busy = fit(&o, &usage, &one).expect_err("full");
        assert!(matches!(busy, Shortfall::Busy(_)), "{busy:?}");
        usage.release(&a);
        assert_eq!(fit(&o, &usage, &one).expect("fits").gpu_ids, vec![0]);
    }

    #[test]
    fn slots_bound_concurrency_and_zero_slots_is_unlimited() {
        let exec = Demand::of_step("exec", &json!({}), None);
        let mut usage = Usage::default();
        let o = offer(1, &[]);
        usage.take(&fit(&o, &usage, &exec).expect("fits"));
        assert_eq!(
            fit(&o, &usage, &exec),
            Err(Shortfall::Busy("1 of 1 slots in use".into()))
        );
        let unlimited = offer(0, &[]);
        for _ in 0..100 {
            let g = fit(&unlimited, &usage, &exec).expect("no limit");
            usage.take(&g);
        }
    }

    #[test]
    fn what_can_never_fit_says_so() {
        let two = Demand::of_step("train", &json!({"gpu_count": 2}), None);
        assert_eq!(
            could_fit(&offer(4, &[0]), &two),
            Err(Shortfall::Never(
                Resource::Gpus,
                "needs 2 GPUs; the agent has 1".into()
            ))
        );
        let big = Demand::of_step(
            "exec",
            &json!({}),
            Some(&Resources {
                slots: Some(8),
                ..Resources::default()
            }),
        );
        assert!(matches!(
            could_fit(&offer(4, &[]), &big),
            Err(Shortfall::Never(Resource::Slots, _))
        ));
        // All of an agent's GPUs fit any agent, none on a CPU host.
        let all = Demand::of_step("infer", &json!({}), None);
        assert_eq!(
            fit(&offer(2, &[]), &Usage::default(), &all)
                .expect("fits")
                .gpu_ids,
            Vec::<u32>::new()
        );
    }

    #[test]
    fn resources_are_checked_with_the_field_named() {
        let pools = BTreeMap::from([("hive".to_owned(), 2)]);
        let bad = |r: Resources| r.check().expect_err("refused").0;
        assert_eq!(
            bad(Resources {
                slots: Some(0),
                ..Resources::default()
            }),
            "resources.slots"
        );
        assert_eq!(
            bad(Resources {
                gpus: Some(MAX_GPUS + 1),
                ..Resources::default()
            }),
            "resources.gpus"
        );
        let (field, msg) = Resources {
            pool: Some("spark".into()),
            ..Resources::default()
        }
        .check_pool(&pools)
        .expect_err("unknown pool");
        assert_eq!(field, "resources.pool");
        assert!(msg.contains("hive"), "{msg}");
    }
}
