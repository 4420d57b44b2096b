#!/usr/bin/env bash
# A throw-away ONE-NODE Slurm cluster plus a PostgreSQL server on this machine, for ebmlab's
# scheduler backend and its tests. Works without systemd (containers, CI VMs): every daemon is
# started directly, with its state, logs and pid file under $EBMLAB_CLUSTER_DIR.
#
#   scripts/cluster.sh up [--no-install]  install missing Debian packages (unless --no-install),
#                                         start everything (idempotent: running daemons are kept).
#                                         CONTRACT: the LAST line of stdout is the PostgreSQL URL,
#                                         e.g. postgres://ebmlab@127.0.0.1:55432/ebmlab
#   scripts/cluster.sh down [--purge]     cancel running jobs, stop the daemons this script started;
#                                         --purge also deletes $EBMLAB_CLUSTER_DIR (all state).
#   scripts/cluster.sh status             daemons, sinfo, squeue, pg_isready, the URL (last line).
#
# Environment (all optional):
#   EBMLAB_CLUSTER_DIR   state/log/pid folder            (default: <repo>/.cluster)
#   EBMLAB_PG_PORT       PostgreSQL port on 127.0.0.1     (default: 55432)
#   EBMLAB_MARIADB_PORT  MariaDB port on 127.0.0.1        (default: 53306; used only by slurmdbd)
#   EBMLAB_SLURM_PORT    slurmctld port; slurmd uses +1, slurmdbd +2 (default: 56817)
#   EBMLAB_REQUEUE_DELAY seconds a requeued job waits before it may start again (default: 10)
#
# Slurm clients (sbatch, squeue, sacct, ...) find the cluster through SLURM_CONF=<dir>/etc/slurm.conf.
# When /etc/slurm/slurm.conf is absent (and writable), `up` also links it there so plain `sinfo`
# works; `down --purge` removes that link again.
#
# Accounting: plain `sacct` needs slurmdbd. The old accounting_storage/filetxt plugin is gone
# (Slurm 22.05 ships only accounting_storage/none and /slurmdbd; with none, sacct just says
# "accounting storage is disabled"); jobcomp/filetxt is only read by `sacct -c`, without job steps
# or requeue history, unlike a real cluster. slurmdbd's only storage backend is MySQL/MariaDB. The lightest working option is a private mariadbd from `mariadb-server-core`
# (no init scripts, so the package starts nothing) listening on 127.0.0.1, root without password.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CL="${EBMLAB_CLUSTER_DIR:-$ROOT/.cluster}"
PG_PORT="${EBMLAB_PG_PORT:-55432}"
DB_PORT="${EBMLAB_MARIADB_PORT:-53306}"
CTLD_PORT="${EBMLAB_SLURM_PORT:-56817}"
SLURMD_PORT=$((CTLD_PORT + 1))
DBD_PORT=$((CTLD_PORT + 2))
REQUEUE_DELAY="${EBMLAB_REQUEUE_DELAY:-10}"

CLUSTER_NAME=ebmlab
PG_DB=ebmlab
PG_URL="postgres://$PG_DB@127.0.0.1:$PG_PORT/$PG_DB"
HOST="$(hostname -s)"
ME="$(id -un)"
ETC="$CL/etc" RUN="$CL/run" LOG="$CL/log" SPOOL="$CL/spool"
export SLURM_CONF="$ETC/slurm.conf"

# PostgreSQL refuses to run as root, so as root its server runs as the `postgres` system user
# (created by the Debian package); a developer's server simply runs as themselves.
if [ "$(id -u)" -eq 0 ]; then SUDO=""; PG_OWNER=postgres; else SUDO="sudo"; PG_OWNER="$ME"; fi

step() { printf '==> %s\n' "$*"; }
die() { printf 'cluster.sh: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------- helpers

# A zombie counts as gone: where PID 1 does not reap orphans (some sandboxes), it never goes away.
proc_running() { [ -r "/proc/$1/stat" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }

# pid_alive NAME: the pid in $RUN/NAME.pid is a live process whose name starts with NAME
# (guards against a stale pid file whose pid was reused by something else).
pid_alive() {
  local f="$RUN/$1.pid" pid
  [ -s "$f" ] || return 1
  pid="$(head -n1 "$f" | tr -dc 0-9)"
  [ -n "$pid" ] && proc_running "$pid" && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$1"* ]]
}

# stop_pid NAME: SIGTERM the process from its pid file, wait up to 30 s, then SIGKILL.
stop_pid() {
  local name="$1" pid i
  pid_alive "$name" || { rm -f "$RUN/$name.pid"; return 0; }
  pid="$(head -n1 "$RUN/$name.pid" | tr -dc 0-9)"
  step "stopping $name (pid $pid)"
  kill "$pid" 2>/dev/null || true
  for i in $(seq 150); do proc_running "$pid" || break; sleep 0.2; done
  proc_running "$pid" && kill -9 "$pid" 2>/dev/null || true
  rm -f "$RUN/$name.pid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for SECONDS WHAT CMD...: poll CMD until it succeeds; on timeout print the logs and fail.
# Each try of an external command is cut off after 5 s (Slurm clients retry for a long time).
wait_for() {
  local secs="$1" what="$2" end run=(timeout 5); shift 2
  [ "$(type -t "$1")" = function ] && run=()
  end=$((SECONDS + secs))
  while [ "$SECONDS" -lt "$end" ]; do "${run[@]}" "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  show_logs
  die "timed out after ${secs}s waiting for $what (logs above, all in $LOG)"
}

show_logs() {
  local f
  for f in "$LOG"/*.log; do [ -f "$f" ] && { echo "----- $f (last 25 lines)"; tail -n 25 "$f"; }; done >&2
}

pg_bin() {
  local dirs=(/usr/lib/postgresql/*/bin)
  [ -d "${dirs[0]}" ] || die "PostgreSQL server binaries not found under /usr/lib/postgresql"
  printf '%s\n' "${dirs[@]}" | sort -V | tail -n1
}

as_pg_owner() { if [ "$ME" = "$PG_OWNER" ]; then "$@"; else runuser -u "$PG_OWNER" -- "$@"; fi; }

# ---------------------------------------------------------------------------------- install

install_packages() {
  # --no-install-recommends: slurm-wlm would otherwise pull in a dozen unused plugin packages.
  # slurmctld + slurmd + slurm-client are what the slurm-wlm metapackage bundles; slurmdbd and
  # mariadb-server-core (+ -client-core for mariadb-install-db's my_print_defaults) are for sacct.
  local pkgs=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server-core mariadb-client-core
              postgresql) missing=() p
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  step "installing Debian packages: ${missing[*]}"
  # Update the lists only when apt cannot find a package (fresh containers ship without them).
  if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then $SUDO apt-get update -qq; fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

check_commands() {
  local c
  for c in munged mungekey slurmctld slurmd slurmdbd sinfo sacctmgr mariadbd mariadb-install-db; do
    command -v "$c" >/dev/null || die "$c not found (run without --no-install to install packages)"
  done
  pg_bin >/dev/null
}

# ---------------------------------------------------------------------------------- config

make_dirs() {
  # munged insists that every directory above its socket is world-executable and that no
  # directory above its key is group/world-writable, hence the explicit modes.
  # (The postgres user, when we are root, needs the same to reach its data dir.)
  mkdir -p "$ETC" "$RUN" "$LOG" "$SPOOL/ctld" "$SPOOL/d" "$CL/mariadb"
  local d="$CL"
  while d="$(dirname "$d")"; [ "$d" != / ]; do
    [ "$(( 0$(stat -c %a "$d") & 1 ))" -eq 1 ] ||
      die "$d is not world-executable, which munged requires; set EBMLAB_CLUSTER_DIR elsewhere"
  done
  chmod 755 "$CL" "$ETC" "$RUN" "$LOG"
  chmod 700 "$SPOOL"
}

# write_if_changed FILE MODE: stdin -> FILE; warns when a running daemon holds an older version.
write_if_changed() {
  local f="$1" mode="$2" tmp="$1.new"
  cat >"$tmp"; chmod "$mode" "$tmp"
  if [ -f "$f" ] && cmp -s "$tmp" "$f"; then rm -f "$tmp"; return 0; fi
  [ -f "$f" ] && pid_alive slurmctld &&
    echo "warning: $f changed while Slurm is running; run 'cluster.sh down && cluster.sh up' to apply" >&2
  mv -f "$tmp" "$f"
}

write_slurm_conf() {
  local cpus mem_mb
  cpus="$(nproc)"
  mem_mb="$(free -m | awk '/^Mem:/ {print $2}')"
  write_if_changed "$ETC/slurm.conf" 644 <<EOF
# Written by scripts/cluster.sh: a one-node test cluster. Edits are overwritten by \`up\`.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$HOST(127.0.0.1)
# The daemons run as the invoking user (root in CI). slurmd must be root to start jobs of other
# users; for a developer's own jobs, slurmd running as that developer is enough.
SlurmUser=$ME
SlurmdUser=$ME
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket=$RUN/munge.socket,cred_expire=$REQUEUE_DELAY
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
# No cgroups: containers/VMs without systemd rarely give a usable, writable cgroup hierarchy.
# linuxproc tracks a job's processes through the /proc parent tree, which works everywhere.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
# sacct reads finished jobs from slurmdbd (see slurmdbd.conf next to this file).
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# For accounting_storage/slurmdbd this "password" is the munge socket used to talk to slurmdbd.
AccountingStoragePass=$RUN/munge.socket
# Batch jobs may be requeued (scontrol requeue) without sbatch --requeue; 1 is also the default.
JobRequeue=1
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
# Schedule promptly (defaults: up to 3 s after submit, full passes every 60 s / backfill every
# 30 s), so tests see jobs start, and requeued jobs restart, within a few seconds.
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2
# Cores and memory are consumable, so several 1-CPU jobs run side by side. A job that asks for no
# memory gets one CPU's share of the node, not the whole node (which would serialize jobs).
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem_mb / cpus))
# Trust the node line below even if the hardware probe disagrees (containers, cpusets).
SlurmdParameters=config_overrides
# GPUs: add "GresTypes=gpu" here, "Gres=gpu:<count>" to the NodeName line, and a gres.conf
# next to this file with e.g. "NodeName=$HOST Name=gpu File=/dev/nvidia[0-1]".
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  # slurmdbd looks for slurmdbd.conf next to slurm.conf; it must be private to SlurmUser.
  write_if_changed "$ETC/slurmdbd.conf" 600 <<EOF
# Written by scripts/cluster.sh.
AuthType=auth/munge
AuthInfo=socket=$RUN/munge.socket
DbdHost=$HOST
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=$ME
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=root
StorageLoc=slurm_acct_db
EOF
}

# Plain `sinfo`/`sbatch` (no SLURM_CONF) read /etc/slurm/slurm.conf: point it at ours, but only
# when nothing else is there (never overwrite a real cluster's config).
link_etc_conf() {
  local link=/etc/slurm/slurm.conf
  if [ -L "$link" ] && [ "$(readlink "$link")" = "$SLURM_CONF" ]; then return 0; fi
  if [ ! -e "$link" ] && [ ! -L "$link" ] && [ -w /etc/slurm ]; then
    ln -s "$SLURM_CONF" "$link"
  else
    echo "note: $link is not ours; use: export SLURM_CONF=$SLURM_CONF" >&2
  fi
}

# ---------------------------------------------------------------------------------- daemons

start_munge() {
  pid_alive munged && return 0
  step "starting munged"
  if [ ! -s "$ETC/munge.key" ]; then
    mungekey --create --keyfile="$ETC/munge.key"
  fi
  chmod 600 "$ETC/munge.key"
  munged --key-file="$ETC/munge.key" --socket="$RUN/munge.socket" --pid-file="$RUN/munged.pid" \
    --log-file="$LOG/munged.log" --seed-file="$RUN/munged.seed" </dev/null >>"$LOG/munged.log" 2>&1 ||
    { show_logs; die "munged did not start"; }
  wait_for 10 munged munge -S "$RUN/munge.socket" -n
}

start_mariadb() {
  pid_alive mariadbd && return 0
  if [ ! -d "$CL/mariadb/mysql" ]; then
    step "initialising MariaDB for slurmdbd in $CL/mariadb"
    # normal auth: root@127.0.0.1 without password, which is all slurmdbd needs.
    mariadb-install-db --no-defaults --datadir="$CL/mariadb" --user="$ME" \
      --auth-root-authentication-method=normal --skip-test-db >"$LOG/mariadb-install.log" 2>&1 ||
      { show_logs; die "mariadb-install-db failed"; }
  fi
  port_open "$DB_PORT" && die "port $DB_PORT is taken; set EBMLAB_MARIADB_PORT"
  step "starting mariadbd on 127.0.0.1:$DB_PORT"
  # Settings as Slurm's accounting docs recommend, scaled down for a test machine.
  setsid mariadbd --no-defaults --datadir="$CL/mariadb" --user="$ME" \
    --bind-address=127.0.0.1 --port="$DB_PORT" --socket="$RUN/mariadb.sock" \
    --pid-file="$RUN/mariadbd.pid" --log-error="$LOG/mariadb.log" \
    --innodb-buffer-pool-size=64M --innodb-log-file-size=16M --innodb-lock-wait-timeout=900 \
    </dev/null >>"$LOG/mariadb.log" 2>&1 &
  wait_for 60 mariadbd port_open "$DB_PORT"
}

start_slurmdbd() {
  if ! pid_alive slurmdbd; then
    port_open "$DBD_PORT" && die "port $DBD_PORT is taken; set EBMLAB_SLURM_PORT"
    step "starting slurmdbd"
    slurmdbd </dev/null >>"$LOG/slurmdbd.log" 2>&1 || { show_logs; die "slurmdbd did not start"; }
    wait_for 60 slurmdbd sacctmgr -n list cluster
  fi
  # slurmctld only sends job records for a cluster that the database knows.
  if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER_NAME"; then
    sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null
  fi
}

start_slurmctld() {
  pid_alive slurmctld && return 0
  port_open "$CTLD_PORT" && die "port $CTLD_PORT is taken; set EBMLAB_SLURM_PORT"
  step "starting slurmctld"
  # Without -c, slurmctld recovers saved jobs and the next job id from StateSaveLocation.
  slurmctld </dev/null >>"$LOG/slurmctld.log" 2>&1 || { show_logs; die "slurmctld did not start"; }
  wait_for 60 slurmctld scontrol ping
}

start_slurmd() {
  pid_alive slurmd && return 0
  step "starting slurmd (node $HOST)"
  slurmd -N "$HOST" </dev/null >>"$LOG/slurmd.log" 2>&1 || { show_logs; die "slurmd did not start"; }
}

node_state() { sinfo -h -n "$HOST" -o %t 2>/dev/null | head -n1; }
node_ready() { [[ "$(node_state)" =~ ^(idle|mix|alloc|comp)$ ]]; }

wait_node_ready() {
  local i
  for i in $(seq 120); do
    node_ready && return 0
    # A node left DRAIN/DOWN by an earlier crash does not come back by itself.
    if [ "$i" -eq 10 ] && [[ "$(node_state)" =~ ^(down|drain|drng|fail) ]]; then
      scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
    fi
    sleep 0.5
  done
  sinfo -N -l >&2 || true
  show_logs
  die "node $HOST is not idle after 60s (state: $(node_state)); logs above"
}

start_postgres() {
  local bin; bin="$(pg_bin)"
  if [ ! -s "$CL/postgres/PG_VERSION" ]; then
    step "initialising PostgreSQL in $CL/postgres"
    mkdir -p "$CL/postgres"; chown "$PG_OWNER" "$CL/postgres"; chmod 700 "$CL/postgres"
    # trust on 127.0.0.1 only: the server listens nowhere else and is a local test database.
    as_pg_owner "$bin/initdb" -D "$CL/postgres" -U postgres --auth=trust -E UTF8 --no-locale \
      >"$LOG/postgres-initdb.log" 2>&1 || { cat "$LOG/postgres-initdb.log" >&2; die "initdb failed"; }
  fi
  if ! as_pg_owner "$bin/pg_ctl" -D "$CL/postgres" status >/dev/null 2>&1; then
    port_open "$PG_PORT" && die "port $PG_PORT is taken; set EBMLAB_PG_PORT"
    step "starting PostgreSQL on 127.0.0.1:$PG_PORT"
    touch "$LOG/postgres.log"; chown "$PG_OWNER" "$LOG/postgres.log"
    # TCP only (no unix socket): nothing to clean up outside $CL, and the URL is all callers use.
    as_pg_owner "$bin/pg_ctl" -D "$CL/postgres" -l "$LOG/postgres.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -c unix_socket_directories=''" start >/dev/null ||
      { tail -n 25 "$LOG/postgres.log" >&2; die "PostgreSQL did not start"; }
  fi
  wait_for 30 "pg_isready" "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"
}

ensure_pg_db() {
  local psql=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -tA)
  if [ -z "$("${psql[@]}" -c "select 1 from pg_roles where rolname = '$PG_DB'")" ]; then
    "${psql[@]}" -c "create role $PG_DB login createdb"
  fi
  if [ -z "$("${psql[@]}" -c "select 1 from pg_database where datname = '$PG_DB'")" ]; then
    "${psql[@]}" -c "create database $PG_DB owner $PG_DB"
  fi
}

# ---------------------------------------------------------------------------------- commands

cmd_up() {
  local install=1
  for a in "$@"; do
    case "$a" in --no-install) install=0 ;; *) die "up: unknown option $a" ;; esac
  done
  [ "$install" -eq 1 ] && install_packages
  check_commands
  make_dirs
  write_slurm_conf
  start_munge
  start_mariadb
  start_slurmdbd
  start_slurmctld
  start_slurmd
  link_etc_conf
  wait_node_ready
  start_postgres
  ensure_pg_db
  step "Slurm $(sinfo -V | awk '{print $2}'): node $HOST is $(node_state); SLURM_CONF=$SLURM_CONF"
  echo "$PG_URL"
}

cmd_down() {
  local purge=0 jobs
  for a in "$@"; do
    case "$a" in --purge) purge=1 ;; *) die "down: unknown option $a" ;; esac
  done
  # Job steps (slurmstepd) outlive slurmd, so cancel running jobs rather than orphan them.
  # Pending jobs stay queued and run after the next `up`.
  if pid_alive slurmctld; then
    jobs="$(squeue -h -t RUNNING,SUSPENDED,COMPLETING -o %A 2>/dev/null | tr '\n' ' ')"
    if [ -n "${jobs// }" ]; then
      step "cancelling running jobs: $jobs"
      # shellcheck disable=SC2086
      scancel $jobs || true
      for _ in $(seq 30); do [ -z "$(squeue -h -t RUNNING,COMPLETING -o %A 2>/dev/null)" ] && break; sleep 0.5; done
      sleep 1 # let slurmctld hand the final records to slurmdbd
    fi
  fi
  stop_pid slurmd
  stop_pid slurmctld
  stop_pid slurmdbd
  stop_pid mariadbd
  stop_pid munged
  local bin; bin="$(pg_bin)"
  if [ -s "$CL/postgres/PG_VERSION" ] && as_pg_owner "$bin/pg_ctl" -D "$CL/postgres" status >/dev/null 2>&1; then
    step "stopping PostgreSQL"
    as_pg_owner "$bin/pg_ctl" -D "$CL/postgres" -m fast -w stop >/dev/null
  fi
  if [ "$purge" -eq 1 ]; then
    step "removing $CL"
    rm -rf "$CL"
    if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$SLURM_CONF" ]; then
      rm -f /etc/slurm/slurm.conf
    fi
  fi
}

cmd_status() {
  local d bin
  for d in munged mariadbd slurmdbd slurmctld slurmd; do
    if pid_alive "$d"; then echo "$d: running (pid $(head -n1 "$RUN/$d.pid"))"; else echo "$d: stopped"; fi
  done
  echo "SLURM_CONF=$SLURM_CONF"
  if pid_alive slurmctld; then sinfo; squeue; else echo "slurmctld is not running"; fi
  bin="$(pg_bin)"
  "$bin/pg_isready" -h 127.0.0.1 -p "$PG_PORT" || true
  echo "$PG_URL"
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  status) shift; cmd_status "$@" ;;
  *) echo "usage: $0 up [--no-install] | down [--purge] | status" >&2; exit 2 ;;
esac
