//! The agent registry and liveness: who is connected, what each offers (role, kinds, GPUs,
//! roots, SSH peers), and the snapshot of hosts the planners read.

use super::*;

impl Engine {
    pub(super) fn attach_agent(
        &mut self,
        conn_id: u64,
        reg: v1::Register,
        tx: AgentTx,
    ) -> Result<(), EngineError> {
        let name = reg.agent_name.trim().to_owned();
        if name.is_empty() {
            return Err(EngineError::InvalidRequest(
                "agent_name must not be empty".into(),
            ));
        }
        let role: Role = reg
            .role
            .parse()
            .map_err(|e: ferry_core::state::UnknownValue| {
                EngineError::InvalidRequest(e.to_string())
            })?;
        let now = self.now();
        // One live connection per name: a second one does not replace the first (it could
        // take over the agent's jobs) unless the first has been silent past the timeout.
        if let Some(a) = self.agents.get(&name)
            && a.conn.is_some()
        {
            let silent = now.duration_since(a.last_seen);
            if silent <= self.settings.agent_timeout {
                security_event(
                    &name,
                    "a second connection under a live agent's name refused",
                );
                return Err(EngineError::FailedPrecondition(format!(
                    "agent `{name}` is already connected (last heard {} ago); a second connection under its name is refused until the first is silent for {}",
                    format_duration(silent),
                    format_duration(self.settings.agent_timeout)
                )));
            }
            warn!(agent = %name, "replacing a connection silent for {}", format_duration(silent));
        }
        let _ = tx.send(Ok(v1::CoordinatorMessage {
            msg: Some(coordinator_message::Msg::Registered(v1::Registered {
                heartbeat_interval_ms: self.settings.heartbeat.as_millis() as u64,
            })),
        }));
        // A new agent process numbers its events from 1 again.
        let cursor = self.cursors.entry(name.clone()).or_insert(Cursor {
            instance: reg.instance,
            seq: 0,
        });
        if cursor.instance != reg.instance {
            *cursor = Cursor {
                instance: reg.instance,
                seq: 0,
            };
            self.dirty_cursors.insert(name.clone());
        }
        let agent = self
            .agents
            .entry(name.clone())
            .or_insert_with(|| AgentRt::new(role, now, false));
        agent.role = role;
        agent.kinds = reg.kinds.iter().cloned().collect();
        agent.gpus = reg.gpus.clone();
        // What it says it offers is what it is given, within bounds (0: not limited).
        agent.slots = reg.slots.min(ferry_core::capacity::MAX_SLOTS);
        agent.gpus.sort_unstable();
        agent.gpus.dedup();
        agent.gpus.truncate(ferry_core::capacity::MAX_GPUS as usize);
        // What an agent says of itself is shown to users: made to fit, never trusted.
        agent.hostname = ferry_core::limits::fitted(&reg.hostname, ferry_core::limits::IDENT);
        agent.version = ferry_core::limits::fitted(&reg.version, ferry_core::limits::SHORT_NAME);
        agent.paths = reg.paths.clone().into_iter().collect();
        agent.ssh_to = reg.ssh_to.clone();
        agent.conn = Some((conn_id, tx));
        agent.last_seen = now;
        agent.offline_since = None;
        info!(agent = %name, role = %role, jobs = reg.jobs.len(), "agent registered");
        self.reconcile_agent_jobs(&name, reg.jobs);
        self.candidates.extend(self.waiting_for_agent.drain());
        self.capacity_changed = true;
        self.gauges_dirty = true;
        self.publish_hosts();
        Ok(())
    }

    pub(super) fn detach_agent(&mut self, name: &str, conn_id: u64) {
        let now = self.now();
        if let Some(agent) = self.agents.get_mut(name)
            && agent.conn.as_ref().is_some_and(|(id, _)| *id == conn_id)
        {
            agent.conn = None;
            agent.offline_since = Some(now);
            warn!(agent = %name, "agent disconnected");
            self.publish_hosts();
        }
    }

    pub(super) fn agent_message(
        &mut self,
        name: &str,
        conn_id: u64,
        seq: u64,
        msg: agent_message::Msg,
    ) {
        let now = self.now();
        match self.agents.get_mut(name) {
            Some(a) if a.conn.as_ref().is_some_and(|(id, _)| *id == conn_id) => a.last_seen = now,
            _ => return, // a message from a replaced connection
        }
        // A numbered event sent again after a reconnect: applied (and stored) already.
        if seq > 0
            && let Some(cursor) = self.cursors.get_mut(name)
        {
            if seq <= cursor.seq {
                debug!(agent = %name, seq, "event already stored; skipped");
                // Acknowledge again, so the agent lets it go.
                self.dirty_cursors.insert(name.to_owned());
                return;
            }
            cursor.seq = seq;
            self.dirty_cursors.insert(name.to_owned());
        }
        match msg {
            agent_message::Msg::Register(_) => warn!(agent = %name, "duplicate register ignored"),
            agent_message::Msg::Heartbeat(hb) => {
                if let Some(a) = self.agents.get_mut(name) {
                    a.running = hb.running_jobs;
                }
            }
            agent_message::Msg::JobCreated(c) => self.job_created(name, c),
            agent_message::Msg::JobEvent(ev) => self.job_event(name, ev),
        }
    }

    /// What the planners know of the agents.
    pub(super) fn host_infos(&self) -> Vec<HostInfo> {
        self.agents
            .iter()
            .map(|(name, a)| HostInfo {
                name: name.clone(),
                role: Some(a.role),
                paths: a.paths.clone(),
                ssh_to: a.ssh_to.clone(),
                connected: a.conn.is_some(),
            })
            .collect()
    }

    /// Publishes the hosts the planners see (after an agent registers, leaves or times out).
    pub(super) fn publish_hosts(&self) {
        self.hosts.send_replace(self.host_infos());
    }

    /// The engine did not listen for `busy` (a slow store write, a burst of messages): what
    /// agents sent meanwhile waits in its queue, so that time does not count against them.
    /// An agent that really went away is found one `agent_timeout` later.
    pub(super) fn forgive_stall(&mut self, busy: Duration) {
        let now = self.now();
        debug!(
            busy_ms = busy.as_millis() as u64,
            "engine was busy; agents' silence restarts"
        );
        for agent in self.agents.values_mut() {
            if agent.conn.is_some() {
                agent.last_seen = agent.last_seen.max(now);
            }
        }
    }

    /// Marks agents that stopped talking as disconnected; returns those gone longer than
    /// `workflow.agent_timeout`.
    pub(super) fn check_liveness(&mut self) -> HashSet<String> {
        let now = self.now();
        let timeout = self.settings.agent_timeout;
        let mut changed = false;
        for (name, agent) in &mut self.agents {
            if agent.conn.is_some() && now.duration_since(agent.last_seen) > timeout {
                warn!(agent = %name, "agent missed its heartbeats; treating it as disconnected");
                agent.conn = None;
                agent.offline_since = Some(agent.last_seen);
                changed = true;
            }
        }
        if changed {
            self.publish_hosts();
        }
        self.agents
            .iter()
            .filter(|(_, a)| {
                a.conn.is_none()
                    && a.offline_since
                        .is_some_and(|t| now.duration_since(t) > timeout)
            })
            .map(|(n, _)| n.clone())
            .collect()
    }
}
