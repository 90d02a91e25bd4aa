#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, so tests/test_slurm.py can run a sweep through
# hydra-submitit-launcher for real (CI runs it as root). Everything lives under $LONGLIVE_SLURM_DIR
# (default /tmp/longlive-slurm): slurm.conf, the munge key and socket, state, logs; nothing in /etc is touched.
# No cgroups (containers rarely delegate them): proctrack/linuxproc, task/none. No accounting database: a small
# `sacct` in $DIR/bin answers from slurmctld's memory, which is all submitit asks of sacct.
#
#   slurm-single-node.sh install   apt-get slurm-wlm + munge when slurmctld is missing (root)
#   slurm-single-node.sh start     write the config, start munged, slurmctld, slurmd; wait until the node is idle
#   slurm-single-node.sh stop      stop the three daemons this script started (by their pid files)
#   slurm-single-node.sh env       the environment a client needs (SLURM_CONF, PATH), as shell exports
#
# Exit codes of start: 0 idle; 2 not root; 3 Slurm not installed; 4 a daemon failed (its log tail is printed).
set -euo pipefail

DIR=${LONGLIVE_SLURM_DIR:-/tmp/longlive-slurm}
PORT=${LONGLIVE_SLURM_PORT:-6817}   # slurmctld; slurmd listens on PORT + 1
NODE=$(hostname -s)
CONF=$DIR/slurm.conf
SOCKET=$DIR/munge/munge.socket.2
export SLURM_CONF=$CONF

say() { echo "slurm-single-node: $*" >&2; }

install() {
  if command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 && command -v munged >/dev/null 2>&1; then
    return 0
  fi
  [ "$(id -u)" = 0 ] || { say "not root: cannot install slurm-wlm"; return 2; }
  command -v apt-get >/dev/null 2>&1 || { say "no apt-get: install slurm-wlm and munge by hand"; return 3; }
  # policy-rc.d 101: the packages' own services stay down (no systemd here; this script starts the daemons)
  local policy=/usr/sbin/policy-rc.d created=0
  if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' >$policy && chmod +x $policy && created=1; fi
  local rc=0
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurm-wlm munge >/dev/null) || rc=$?
  if [ $created = 1 ]; then rm -f $policy; fi
  [ $rc = 0 ] || { say "apt-get install slurm-wlm munge failed (exit $rc)"; return 3; }
}

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

node_state() { sinfo -h -N -n "$NODE" -o %t 2>/dev/null | head -1 || true; }  # empty while slurmctld is down

write_conf() {
  local mem_mib cpus
  mem_mib=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)  # below what slurmd detects
  cpus=$(nproc)
  cat >"$CONF" <<EOF
# Written by .ci/slurm-single-node.sh: one node ($NODE) on localhost, no cgroups, no accounting.
ClusterName=longlive
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/slurmd
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
KillWait=5
MailProg=/bin/true
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mib State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

write_sacct() {
  # submitit polls `sacct -o JobID,State,NodeList --parsable2 -j ID ...`; array tasks as ARRAYID_TASK
  cat >"$DIR/bin/sacct" <<'EOF'
#!/bin/sh
# sacct for the single-node test cluster (no accounting database): states from slurmctld via scontrol.
echo "JobID|State|NodeList"
while [ $# -gt 0 ]; do
  if [ "$1" = -j ]; then scontrol -o show job "$2" 2>/dev/null; shift; fi
  shift
done | awk '{
  for (i = 1; i <= NF; i++) { k = $i; sub(/=.*/, "", k); v = $i; sub(/^[^=]*=/, "", v); f[k] = v }
  id = f["JobId"]
  if (("ArrayJobId" in f) && f["ArrayJobId"] != "") {
    t = f["ArrayTaskId"]; sub(/%.*/, "", t); id = f["ArrayJobId"] "_" (t ~ /[-,]/ ? "[" t "]" : t)
  }
  print id "|" f["JobState"] "|" f["NodeList"]
  split("", f)
}'
EOF
  chmod +x "$DIR/bin/sacct"
}

fail() {  # a daemon did not come up: its logs' last errors, then which (the last line)
  local f
  for f in "$DIR"/log/*.log; do
    { grep -E "error|fatal" "$f" | grep -v -E "pmix|MPI: Cannot" | tail -n 3 | sed "s|^|${f##*/}: |" >&2; } || true
  done
  say "$1"
  exit 4
}

start() {
  [ "$(id -u)" = 0 ] || { say "not root: slurmctld and slurmd must run as root here"; exit 2; }
  for b in munged slurmctld slurmd sinfo; do
    command -v $b >/dev/null 2>&1 || { say "Slurm is not installed ($b missing): run '$0 install' as root"; exit 3; }
  done
  if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" && [ "$(node_state)" = idle ]; then
    say "already running (node $NODE idle)"; return 0
  fi
  stop 2>/dev/null || true
  rm -rf "$DIR/state" "$DIR/slurmd" "$DIR/log"
  mkdir -p "$DIR"/{state,slurmd,log,bin,munge}
  chmod 700 "$DIR/munge"
  if [ ! -s "$DIR/munge.key" ]; then
    if command -v mungekey >/dev/null 2>&1; then mungekey --create --keyfile="$DIR/munge.key"
    else dd if=/dev/urandom of="$DIR/munge.key" bs=1024 count=1 2>/dev/null; fi
  fi
  chmod 600 "$DIR/munge.key"
  write_conf
  write_sacct
  munged --force --key-file="$DIR/munge.key" --socket="$SOCKET" --pid-file="$DIR/munged.pid" \
    --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munge.seed" || fail "munged failed to start"
  slurmctld -f "$CONF" || fail "slurmctld failed to start"
  slurmd -f "$CONF" -N "$NODE" || fail "slurmd failed to start"
  local state=""
  for _ in $(seq 1 60); do
    state=$(node_state)
    [ "$state" = idle ] && { say "node $NODE idle (SLURM_CONF=$CONF)"; return 0; }
    for d in slurmctld slurmd; do  # a daemon that exited after forking (a port in use, a bad option): say so now
      if [ -s "$DIR/$d.pid" ] && ! alive "$DIR/$d.pid"; then fail "$d exited after starting"; fi
    done
    case "$state" in drain*|down*|drng*|fail*) scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true;; esac
    sleep 1
  done
  fail "node $NODE not idle after 60 s (state: ${state:-none}; $(sinfo -h -R 2>&1 | head -1))"
}

stop() {
  local f pid
  if alive "$DIR/slurmctld.pid"; then  # this cluster's jobs first, so no slurmstepd outlives slurmd
    scancel --partition=local 2>/dev/null || true
    for _ in $(seq 1 50); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.2; done
  fi
  for f in slurmd slurmctld munged; do
    if alive "$DIR/$f.pid"; then
      pid=$(cat "$DIR/$f.pid"); kill "$pid"
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$DIR/$f.pid"
  done
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  env) echo "export SLURM_CONF=$CONF PATH=$DIR/bin:\$PATH" ;;
  *) echo "usage: $0 install|start|stop|env" >&2; exit 64 ;;
esac
