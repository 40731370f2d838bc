//! `lparhv deact | act | add-pci | rem-pci | cpu-share | slots`: the
//! partition commands of seed 004 (Figure 3) as the operator, against a
//! running system (docs/slots.md).

use super::Ctx;
use anyhow::Result;
use clap::{Args, Subcommand};
use lparhv::control::{self, ControlRequest};
use lparhv::slots::{Command, Outcome, SlotView};

#[derive(Subcommand)]
pub enum SlotCommand {
    /// Power a partition off hard (the fence): its QEMU stops at once.
    Deact(PartitionArgs),
    /// Start (activate) a partition; slots allocated and enabled for it are plugged in.
    Act(PartitionArgs),
    /// Connect a slot to a partition (allocation table + hot-plug: the guest sees "inserted").
    AddPci(SlotArgs),
    /// Take a slot from a partition (clear its enable flag; the guest ejects, or is deactivated after [slots] eject_timeout_ms).
    RemPci(SlotArgs),
    /// Set a partition's CPU share in percent (cgroup quota and weight).
    CpuShare(ShareArgs),
    /// Show the slot allocation table.
    Slots,
}

#[derive(Args)]
pub struct PartitionArgs {
    /// The partition.
    partition: String,
}

#[derive(Args)]
pub struct SlotArgs {
    /// The slot id (`[[slot]] id` in the config).
    slot: u32,
    /// The partition to connect it to (add-pci) or take it from (rem-pci).
    #[arg(long, short = 'p')]
    partition: String,
}

#[derive(Args)]
pub struct ShareArgs {
    /// The partition.
    partition: String,
    /// Percent of its vCPUs' time, 1..=100 (seed 004: 90 active, 10 standby).
    percent: u8,
}

fn command(ctx: &Ctx, cmd: Command) -> Result<()> {
    let reply = control::request(&ctx.target.socket()?, &ControlRequest::Partition(cmd))?;
    let outcome: Option<Outcome> = reply.result.clone().and_then(|v| serde_json::from_value(v).ok());
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&reply.result.clone().unwrap_or_default())?);
    } else if let Some(o) = &outcome {
        println!(
            "{} {}{}: {} ({} ms) {}",
            o.command,
            o.partition,
            o.slot.map(|s| format!(" slot {s}")).unwrap_or_default(),
            o.result,
            o.elapsed_ms,
            o.message
        );
    }
    reply.into_result()?;
    Ok(())
}

pub fn run(ctx: &Ctx, cmd: SlotCommand) -> Result<()> {
    match cmd {
        SlotCommand::Deact(a) => command(ctx, Command::Deact { partition: a.partition }),
        SlotCommand::Act(a) => command(ctx, Command::Act { partition: a.partition }),
        SlotCommand::AddPci(a) => command(ctx, Command::AddPci { slot: a.slot, partition: a.partition }),
        SlotCommand::RemPci(a) => command(ctx, Command::RemPci { slot: a.slot, partition: a.partition }),
        SlotCommand::CpuShare(a) => command(ctx, Command::SetCpuShare { percent: a.percent, partition: a.partition }),
        SlotCommand::Slots => {
            let v = control::call(&ctx.target.socket()?, &ControlRequest::Slots)?;
            if ctx.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let rows: Vec<SlotView> = serde_json::from_value(v)?;
                println!("{:>4} {:<10} {:<7} {:<10} disk", "slot", "owner", "enabled", "attached");
                for r in rows {
                    println!(
                        "{:>4} {:<10} {:<7} {:<10} {}",
                        r.slot,
                        r.owner.unwrap_or("-".into()),
                        r.enabled as u8,
                        r.attached.unwrap_or("-".into()),
                        r.disk
                    );
                }
            }
            Ok(())
        }
    }
}
