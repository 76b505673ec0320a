//! `proxy-status`: every gateway replica the controller knows and whether it is in sync.

use super::table::Table;
use crate::distribution::wire::ControllerStatus;

pub fn table(status: &ControllerStatus) -> Table {
    let mut t = Table::new(&["NAME", "NAMESPACE", "ACKED", "CONTROLLER", "STATUS", "ADDRESS", "LAST SEEN"]);
    for g in &status.gateways {
        t.row(vec![
            g.name.clone(),
            g.namespace.clone(),
            g.acked.to_string(),
            g.current.to_string(),
            g.state().to_string(),
            g.address.clone(),
            if g.connected { "connected".into() } else { format!("{}s ago", g.last_seen_seconds) },
        ]);
    }
    t
}
