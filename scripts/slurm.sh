#!/usr/bin/env bash
# A single-node SLURM cluster on this machine (Debian's slurm-wlm and munge): slurmctld and slurmd on
# localhost, for running `reproduce --slurm` job arrays for real. Needs root.
#   bash scripts/slurm.sh start    # installs the packages if missing, writes the config, starts the daemons
#   bash scripts/slurm.sh stop
set -euo pipefail
CONF_DIR=/etc/slurm
STATE=/var/spool/slurm-local
case "${1:-}" in
  start)
    if [ "$(id -u)" != 0 ]; then echo "scripts/slurm.sh needs root (it installs packages and starts daemons)" >&2; exit 2; fi
    if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge) >/dev/null
    fi
    mkdir -p /etc/munge /var/run/munge /var/log/munge /var/lib/munge "$CONF_DIR" "$STATE/ctld" "$STATE/d" /var/log/slurm
    if [ ! -s /etc/munge/munge.key ]; then
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown -R munge:munge /etc/munge /var/run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
    pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged --force </dev/null >/dev/null 2>&1
    CPUS=$(nproc)
    MEM=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
    cat > "$CONF_DIR/slurm.conf" <<CONF
ClusterName=local
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
DependencyParameters=kill_invalid_depend
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
NodeName=localhost CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=local Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
    rm -f "$CONF_DIR/cgroup.conf"  # no cgroups: proctrack/linuxproc and task/none need none
    pgrep -x slurmctld >/dev/null || slurmctld </dev/null >/dev/null 2>&1  # daemons keep no terminal: a CI harness waits for none
    pgrep -x slurmd >/dev/null || slurmd </dev/null >/dev/null 2>&1
    for _ in $(seq 1 60); do
      if timeout 5 sinfo -h -o %T 2>/dev/null | grep -qE "idle|mixed|alloc"; then echo "slurm: up ($CPUS CPUs)"; exit 0; fi
      pgrep -x slurmctld >/dev/null || slurmctld </dev/null >/dev/null 2>&1 || true
      pgrep -x slurmd >/dev/null || slurmd </dev/null >/dev/null 2>&1 || true
      timeout 5 scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
      sleep 1
    done
    tail -5 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
    echo "slurm did not come up; see /var/log/slurm/" >&2; exit 1
    ;;
  stop)
    for daemon in slurmd slurmctld munged; do
      pkill -x "$daemon" 2>/dev/null || true
      for _ in $(seq 1 50); do pgrep -x "$daemon" >/dev/null || break; sleep 0.1; done
    done
    ;;
  *) echo "usage: slurm.sh start | stop" >&2; exit 2 ;;
esac
