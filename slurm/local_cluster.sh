#!/usr/bin/env bash
# A two-node Slurm cluster on this machine, for tests and CI (no systemd, no munge, no root daemons
# beyond the ones started here).
#
#   slurm/local_cluster.sh up [--hosts]   install Debian's Slurm if missing, start slurmctld + 2 slurmd
#   slurm/local_cluster.sh down           stop exactly the daemons `up` started (by pid file)
#   slurm/local_cluster.sh status         sinfo / squeue
#
# After `up`:  source $BASE/slurm_env.sh   (or export the SLURM_CONF line `up` prints)
#
# Env: SYNPRO_SLURM_BASE (default /tmp/synpro-slurm), SYNPRO_SLURM_NODES (2), SYNPRO_SLURM_CPUS (16),
#      SYNPRO_SLURM_GPUS (8, fake gres backed by empty files), SYNPRO_SLURM_PORT (17000; slurmctld on it,
#      slurmd N on it + N).
# Nodes are node1..nodeN, all 127.0.0.1 with their own slurmd port, so host names never need to
# resolve; `--hosts` adds "127.0.0.1 node1 node2 ..." to /etc/hosts (only the missing names) for
# scripts that resolve node names themselves. Partition `batch` is the default.
set -euo pipefail

BASE=${SYNPRO_SLURM_BASE:-/tmp/synpro-slurm}
NODES=${SYNPRO_SLURM_NODES:-2}
CPUS=${SYNPRO_SLURM_CPUS:-16}
GPUS=${SYNPRO_SLURM_GPUS:-8}
PORT=${SYNPRO_SLURM_PORT:-17000}
CONF=$BASE/etc/slurm.conf
ENV_FILE=$BASE/slurm_env.sh
export SLURM_CONF=$CONF

log() { echo "[local_cluster] $*" >&2; }

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
    local missing="" p
    for p in slurmctld slurmd slurm-client; do
        dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
    done
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" != 0 ]; then
        log "missing packages:$missing (install them as root: apt-get install slurmctld slurmd slurm-client)"
        exit 1
    fi
    log "installing:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

write_config() {
    mkdir -p "$BASE"/{etc,state,log,run,fakegpu}
    local names="" i g
    cat > "$CONF.tmp" <<CONF
# written by slurm/local_cluster.sh
ClusterName=synpro-local
SlurmctldHost=localhost
SlurmctldPort=$PORT
SlurmUser=root
SlurmdUser=root
# no munge: both daemons and clients on this host trust each other
AuthType=auth/none
CredType=cred/none
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool/%n
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd-%n.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd-%n.log
MailProg=/bin/true
# no cgroups: several slurmd share one host
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# nodes advertise the CPUs/GPUs below, not what the host has
SlurmdParameters=config_overrides
ReturnToService=2
# finished jobs stay visible to scontrol for 10 minutes (there is no accounting database)
MinJobAge=600
GresTypes=gpu
CONF
    for i in $(seq 1 "$NODES"); do
        echo "NodeName=node$i NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((PORT + i)) CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=8000 Gres=gpu:$GPUS State=UNKNOWN" >> "$CONF.tmp"
        mkdir -p "$BASE/spool/node$i"
        names="$names,node$i"
    done
    echo "PartitionName=batch Nodes=${names#,} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES" >> "$CONF.tmp"
    mv "$CONF.tmp" "$CONF"
    # count-only gres makes the node INVALID; empty files stand in for /dev/nvidia*
    for g in $(seq 0 $((GPUS - 1))); do : > "$BASE/fakegpu/nvidia$g"; done
    printf 'AutoDetect=off\nNodeName=node[1-%d] Name=gpu File=%s/fakegpu/nvidia[0-%d]\n' \
        "$NODES" "$BASE" $((GPUS - 1)) > "$BASE/etc/gres.conf"
    echo "export SLURM_CONF=$CONF" > "$ENV_FILE"
}

add_hosts() {
    local i missing=""
    for i in $(seq 1 "$NODES"); do
        grep -Eq "^[^#]*[[:space:]]node$i([[:space:]]|\$)" /etc/hosts || missing="$missing node$i"
    done
    if [ -n "$missing" ]; then
        log "adding to /etc/hosts: 127.0.0.1$missing"
        echo "127.0.0.1$missing  # synpro local_cluster" >> /etc/hosts
    fi
}

wait_ready() {  # every node up: idle, or running jobs (mix/alloc/completing) when `up` is repeated
    local i states
    for i in $(seq 1 150); do
        states=$(sinfo -h -N -o %t 2>/dev/null | sort -u | tr '\n' ' ')
        if [ -n "$states" ] && [ -z "$(echo "$states" | tr ' ' '\n' | grep -Ev '^(idle|mix|alloc|comp)?$')" ]; then
            return 0
        fi
        sleep 0.2
    done
    log "nodes not ready after 30 s (states: ${states:-none}); logs in $BASE/log"
    tail -n 20 "$BASE"/log/*.log >&2 || true
    return 1
}

up() {
    local hosts=0
    [ "${1:-}" = "--hosts" ] && hosts=1
    install_packages
    if alive "$BASE/run/slurmctld.pid"; then
        log "already up ($BASE)"
    else
        write_config
        # -c: a fresh controller state each time the cluster comes up
        slurmctld -c
        for i in $(seq 1 "$NODES"); do slurmd -N "node$i"; done
    fi
    for i in $(seq 1 "$NODES"); do
        alive "$BASE/run/slurmd-node$i.pid" || slurmd -N "node$i"
    done
    [ "$hosts" = 1 ] && add_hosts
    wait_ready
    sinfo -N -o "%N %t %c %G" >&2
    log "env file: $ENV_FILE"
    echo "export SLURM_CONF=$CONF"
}

down() {
    local f p i
    for f in "$BASE"/run/slurmd-*.pid "$BASE/run/slurmctld.pid"; do
        [ -s "$f" ] || continue
        p=$(cat "$f")
        kill "$p" 2>/dev/null || true
        for i in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$p" 2>/dev/null && { log "pid $p ($f) still running after 5 s"; continue; }
        rm -f "$f"
    done
    log "down ($BASE)"
}

status() {
    sinfo -N -o "%N %t %c %G"
    squeue
}

case "${1:-}" in
    up) shift; up "$@" ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up [--hosts] | down | status" >&2; exit 2 ;;
esac
