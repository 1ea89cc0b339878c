#!/usr/bin/env bash
# A one-node Slurm cluster on localhost for the test suite (Debian's Slurm 22.05 + munge), with two fake GPUs.
#
#   tests/slurm/cluster.sh up   STATE_DIR   install if missing, write /etc/slurm/slurm.conf, start the daemons
#   tests/slurm/cluster.sh down STATE_DIR   stop exactly the daemons `up` started (by pid), restore the config
#
# Why these settings (found by trying them in CI's container):
# - the config must be /etc/slurm/slurm.conf: the executor plugin's job step drops SLURM_CONF;
# - proctrack/linuxproc and task/none: no cgroups or systemd in a container;
# - select/cons_tres with CR_Core_Memory and DefMemPerCPU: otherwise every job takes the whole node;
# - Slurm 22.05 rejects count-only GPU GRES, so two character devices made with mknod stand in for GPUs
#   (`--gpus=2` then yields CUDA_VISIBLE_DEVICES=0,1; nothing opens them, the jobs run on the CPU);
# - no slurmdbd: `sacct` cannot answer, so the test runs Snakemake with `--slurm-status-command squeue`,
#   which needs MinJobAge (300 s here) well above the status-check interval.
set -euo pipefail

cmd=${1:?usage: cluster.sh up|down STATE_DIR}
state=$(realpath -m "${2:?usage: cluster.sh up|down STATE_DIR}")
conf=/etc/slurm/slurm.conf

log() { echo "cluster.sh: $*" >&2; }

install_packages() {
    local missing=()
    for bin in slurmctld slurmd sbatch munged; do command -v "$bin" >/dev/null || missing+=("$bin"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || { log "missing ${missing[*]} and not root: cannot install"; exit 3; }
    command -v apt-get >/dev/null || { log "missing ${missing[*]} and no apt-get"; exit 3; }
    log "installing slurmctld slurmd slurm-client munge"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
}

wait_for() { # seconds, command...
    local n=$1; shift
    for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
    return 1
}

up() {
    [ "$(id -u)" -eq 0 ] || { log "must run as root"; exit 3; }
    install_packages
    mkdir -p "$state"/{state,spool,dev}
    : >"$state/pids"
    # munge runs as the munge user, who may not reach STATE_DIR (pytest's are 0700): its own folder in /tmp
    local mdir key sock
    mdir=$(mktemp -d /tmp/virnucpro-munge.XXXXXX)
    echo "$mdir" >"$state/munge_dir"
    key=$mdir/munge.key sock=$mdir/munge.socket
    dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
    chown -R munge:munge "$mdir"; chmod 755 "$mdir"; chmod 400 "$key"
    su -s /bin/sh munge -c "munged --key-file=$key --socket=$sock --pid-file=$mdir/munged.pid \
        --log-file=$mdir/munged.log --seed-file=$mdir/munged.seed"
    wait_for 10 test -s "$mdir/munged.pid" || { log "munged did not start: $(cat "$mdir/munged.log")"; exit 1; }
    echo "munged $(cat "$mdir/munged.pid")" >>"$state/pids"

    mknod -m 666 "$state/dev/nvidia0" c 195 0 2>/dev/null || true
    mknod -m 666 "$state/dev/nvidia1" c 195 1 2>/dev/null || true
    local mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
    mkdir -p /etc/slurm
    if [ -f "$conf" ] && ! grep -q "virnucpro test cluster" "$conf"; then cp "$conf" "$state/slurm.conf.orig"; fi
    [ -f /etc/slurm/gres.conf ] && ! grep -q "virnucpro test cluster" /etc/slurm/gres.conf \
        && cp /etc/slurm/gres.conf "$state/gres.conf.orig"
    cat >"$conf" <<CONF
# virnucpro test cluster (tests/slurm/cluster.sh); the original, if any, is in $state
ClusterName=virnucprotest
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$sock
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
ReturnToService=2
MinJobAge=300
KillWait=10
MpiDefault=none
SchedulerType=sched/backfill
StateSaveLocation=$state/state
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/slurmctld.log
SlurmdLogFile=$state/slurmd.log
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$mem Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
    cat >/etc/slurm/gres.conf <<CONF
# virnucpro test cluster
NodeName=localhost Name=gpu File=$state/dev/nvidia[0-1]
CONF
    slurmctld
    wait_for 20 test -s "$state/slurmctld.pid" || { log "slurmctld did not start; see $state/slurmctld.log"; exit 1; }
    echo "slurmctld $(cat "$state/slurmctld.pid")" >>"$state/pids"
    slurmd -N localhost
    wait_for 20 test -s "$state/slurmd.pid" || { log "slurmd did not start; see $state/slurmd.log"; exit 1; }
    echo "slurmd $(cat "$state/slurmd.pid")" >>"$state/pids"
    wait_for 30 sinfo -h -o %t || { log "sinfo does not answer"; exit 1; }
    scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
    wait_for 30 sh -c 'sinfo -h -o %t | grep -Eq "^(idle|mix|alloc)"' || {
        log "node not idle: $(sinfo -h -o '%t %E')"; exit 1; }
    log "up: $(sinfo -h -o '%P %D %t %G')"
}

down() {
    [ -f "$state/pids" ] || { log "nothing started from $state"; return 0; }
    # reverse order: slurmd, slurmctld, munged
    tac "$state/pids" | while read -r name pid; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" || true
            for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid" || true
            log "stopped $name ($pid)"
        fi
    done
    rm -f "$state/pids"
    [ -f "$state/munge_dir" ] && rm -rf "$(cat "$state/munge_dir")" "$state/munge_dir"
    if [ -f "$state/slurm.conf.orig" ]; then cp "$state/slurm.conf.orig" "$conf"; else rm -f "$conf"; fi
    if [ -f "$state/gres.conf.orig" ]; then cp "$state/gres.conf.orig" /etc/slurm/gres.conf; else rm -f /etc/slurm/gres.conf; fi
}

case "$cmd" in
    up) up ;;
    down) down ;;
    *) log "usage: cluster.sh up|down STATE_DIR"; exit 2 ;;
esac
