//! `gateway limits show|set`: the node-wide limits every node applies to itself.

use super::LimitsCmd;
use super::conn::Conn;
use super::output::{Output, outln, print_json};
use gateway_model::Limits;
use gateway_wire::admin;
use gateway_wire::convert::{limits_from_wire, limits_to_wire};
use serde_json::json;

fn describe(l: &Limits) -> String {
    let show = |v: Option<u32>| v.map_or_else(|| "unlimited".to_string(), |v| v.to_string());
    format!(
        "max_requests     {}\nmax_connections  {}\nrevision         {}",
        show(l.max_requests),
        show(l.max_connections),
        l.revision
    )
}

pub async fn limits(c: &mut Conn, out: Output, cmd: LimitsCmd) -> anyhow::Result<()> {
    let (revision, limits) = match cmd {
        LimitsCmd::Show { consistency } => {
            let msg = admin::ReadRequest {
                consistency: consistency.wire(),
            };
            let r = c
                .call(msg, |mut cl, r| async move { cl.get_limits(r).await })
                .await?
                .into_inner();
            (r.revision, limits_from_wire(r.limits.unwrap_or_default()))
        }
        LimitsCmd::Set {
            max_requests,
            max_connections,
            cond,
        } => {
            let limits = Limits {
                max_requests,
                max_connections,
                revision: 0,
            };
            let msg = admin::SetLimitsRequest {
                limits: Some(limits_to_wire(&limits)),
                if_revision: cond.if_revision,
            };
            let r = c
                .call(msg, |mut cl, r| async move { cl.set_limits(r).await })
                .await?
                .into_inner();
            (r.revision, limits_from_wire(r.limits.unwrap_or_default()))
        }
    };
    match out {
        Output::Table => outln!("{}", describe(&limits)),
        Output::Json => print_json(&json!({"revision": revision, "limits": limits}))?,
    }
    Ok(())
}
