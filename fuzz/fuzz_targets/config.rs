//! Config files (`--config FILE`, seed 000 §8.1): YAML merged over the defaults, strictly
//! parsed and validated; plus the `FERRY_*` overrides the daemons read from the environment.
#![no_main]

use ferry_core::config::FerryConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = FerryConfig::from_yaml_str(text) {
        let _ = config.workflow.heartbeat();
        let _ = config.workflow.agent_timeout();
        let _ = config.tls.enabled();
        let _ = config.auth.enabled();
        let _ = config.agent.effective_roots(&config);
        for server in config.servers.values() {
            let _ = server.keys();
        }
        // The coordinator re-validates what it loads; valid stays valid.
        assert!(config.validate().is_ok());
    }
    // The same text as `KEY=VALUE` lines of the environment, over no file.
    let env: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    if !env.is_empty() {
        let _ = FerryConfig::load(None, env);
    }
});
