#!/usr/bin/env bash
# A RabbitMQ cluster on one machine, for trying failover and for tests: nodes of the machine's own
# rabbitmq-server installation, beside (never instead of) the RabbitMQ that may already run there.
#
#   deploy/rabbitmq-cluster.sh start          start every node (if down) and form the cluster
#   deploy/rabbitmq-cluster.sh stop           stop every node gracefully; the data stays
#   deploy/rabbitmq-cluster.sh status         each node's state, then the cluster's status
#   deploy/rabbitmq-cluster.sh kill N         SIGKILL node N's Erlang VM (a crash)
#   deploy/rabbitmq-cluster.sh restart N      start node N again; returns once it is back in the cluster
#   deploy/rabbitmq-cluster.sh stop-node N    stop node N gracefully
#   deploy/rabbitmq-cluster.sh ctl N ARGS...  rabbitmqctl against node N (e.g. `ctl 1 list_queues`)
#
# Settings (read by `start`; the other commands use what `start` recorded in the folder):
#   RABBITMQ_CLUSTER_DIR          folder of data, logs, configs and cookie   (target/rabbitmq-cluster)
#   RABBITMQ_CLUSTER_SIZE         number of nodes, 1 or more                 (3)
#   RABBITMQ_CLUSTER_AMQP_PORT    AMQP port of node 1; node N uses it + N-1  (5681)
#   RABBITMQ_CLUSTER_NODE_PREFIX  node N is <prefix>N@localhost              (rmq)
#   RABBITMQ_CLUSTER_PLUGINS      comma-separated plugins to enable          (rabbitmq_prometheus)
#   RABBITMQ_CLUSTER_EXTRA_CONF   a file appended to every node's rabbitmq.conf, e.g. holding
#                                 `consumer_timeout = 5000`                   (none)
#   RABBITMQ_CLUSTER_ADVANCED_CONFIG  a file used as every node's advanced.config (none)
#   RABBITMQ_CLUSTER_TIMEOUT      seconds a node gets to start               (120)
#   RABBITMQ_CLUSTER_SBIN         where the real (not Debian's su-wrapping) scripts are
#                                                                            (/usr/lib/rabbitmq/bin)
# Every other port is the node's AMQP port plus a fixed offset: Erlang distribution +20000,
# rabbitmq_prometheus +10000, rabbitmq_management +30000 (when enabled). Two clusters run side by
# side when their folders, node prefixes and AMQP port blocks differ.
#
# Form the cluster before the product first declares its queues: a quorum queue gets its members
# (up to 3 nodes) when it is declared, and nodes that join later hold none of its replicas.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
dir=${RABBITMQ_CLUSTER_DIR:-$repo/target/rabbitmq-cluster}
size=${RABBITMQ_CLUSTER_SIZE:-3}
amqp_port=${RABBITMQ_CLUSTER_AMQP_PORT:-5681}
prefix=${RABBITMQ_CLUSTER_NODE_PREFIX:-rmq}
plugins=${RABBITMQ_CLUSTER_PLUGINS-rabbitmq_prometheus}
extra_conf=${RABBITMQ_CLUSTER_EXTRA_CONF:-}
advanced_config=${RABBITMQ_CLUSTER_ADVANCED_CONFIG:-}
timeout=${RABBITMQ_CLUSTER_TIMEOUT:-120}
sbin=${RABBITMQ_CLUSTER_SBIN:-/usr/lib/rabbitmq/bin}

# Node settings, set by load_node from the node's node.env.
node="" amqp="" dist="" prometheus="" management=""
# The launcher pid of each node this run started, by node number: what `wait` can report on.
declare -A launched=()
ended=""

log() { printf '==> %s\n' "$*"; }
die() { printf 'rabbitmq-cluster: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '4,11s/^#   //p' "$0" >&2
  exit 2
}

# Per node N: $dir/N/ holds node.env (its name and ports), rabbitmq.conf, enabled_plugins, the
# beam's pid file, mnesia/ (data) and log/ (<node>.log, and console.log for what is printed
# before logging starts). $dir/home/.erlang.cookie is the cluster's own cookie.
node_dir() { echo "$dir/$1"; }

# Loads node N's recorded settings: node, amqp, dist, prometheus, management.
load_node() {
  local file
  file="$(node_dir "$1")/node.env"
  [ -f "$file" ] || die "no node $1 in $dir (run start first)"
  # shellcheck source=/dev/null
  . "$file"
}

# Node N's name, without touching the caller's settings.
node_name() { (load_node "$1" && echo "$node"); }

# The nodes `start` created, by number.
known_nodes() {
  local path
  for path in "$dir"/[0-9]*/node.env; do
    [ -f "$path" ] || continue
    basename "$(dirname "$path")"
  done | sort -n
}

check_settings() {
  [[ $size =~ ^[1-9][0-9]*$ ]] || die "RABBITMQ_CLUSTER_SIZE must be a positive number, not '$size'"
  if ! [[ $amqp_port =~ ^[1-9][0-9]*$ ]] || [ $((amqp_port + size - 1 + 30000)) -gt 65535 ]; then
    die "RABBITMQ_CLUSTER_AMQP_PORT must leave room for its ports (+30000), not '$amqp_port'"
  fi
  [[ $prefix =~ ^[A-Za-z0-9_-]+$ ]] || die "RABBITMQ_CLUSTER_NODE_PREFIX may hold letters, digits, - and _ only"
  [ -z "$extra_conf" ] || [ -f "$extra_conf" ] || die "RABBITMQ_CLUSTER_EXTRA_CONF: no file $extra_conf"
  [ -z "$advanced_config" ] || [ -f "$advanced_config" ] ||
    die "RABBITMQ_CLUSTER_ADVANCED_CONFIG: no file $advanced_config"
  check_sbin
}

check_sbin() {
  [ -x "$sbin/rabbitmq-server" ] ||
    die "no $sbin/rabbitmq-server: install rabbitmq-server (apt-get install rabbitmq-server) or set RABBITMQ_CLUSTER_SBIN"
}

# A cookie of the cluster's own, so the CLI reaches these nodes and no others.
ensure_cookie() {
  local cookie=$dir/home/.erlang.cookie
  mkdir -p "$dir/home"
  if [ ! -s "$cookie" ]; then
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr 'a-f' 'A-F' >"$cookie"
    chmod 400 "$cookie"
  fi
}

# Records node N's name and ports and writes its configuration files.
write_node() {
  local n=$1 nd port
  nd=$(node_dir "$n")
  port=$((amqp_port + n - 1))
  mkdir -p "$nd/mnesia" "$nd/log"
  cat >"$nd/node.env" <<EOF
node=$prefix$n@localhost
amqp=$port
dist=$((port + 20000))
prometheus=$((port + 10000))
management=$((port + 30000))
EOF
  load_node "$n"
  {
    echo "# Written by deploy/rabbitmq-cluster.sh start; rewritten at every start."
    echo "listeners.tcp.default = 127.0.0.1:$amqp"
    echo "distribution.listener.interface = 127.0.0.1"
    echo "distribution.listener.port_range.min = $dist"
    echo "distribution.listener.port_range.max = $dist"
    # guest may log in over loopback only, which is where the listeners are.
    echo "loopback_users.guest = true"
    echo "log.console = false"
    echo "log.file.level = info"
    if [[ ,$plugins, == *,rabbitmq_prometheus,* ]]; then
      echo "prometheus.tcp.ip = 127.0.0.1"
      echo "prometheus.tcp.port = $prometheus"
    fi
    if [[ ,$plugins, == *,rabbitmq_management,* ]]; then
      echo "management.tcp.ip = 127.0.0.1"
      echo "management.tcp.port = $management"
    fi
    if [ -n "$extra_conf" ]; then
      echo "# From $extra_conf (RABBITMQ_CLUSTER_EXTRA_CONF)"
      cat "$extra_conf"
    fi
  } >"$nd/rabbitmq.conf"
  if [ -n "$advanced_config" ]; then
    cp "$advanced_config" "$nd/advanced.config"
  else
    echo '[].' >"$nd/advanced.config"
  fi
  write_plugins "$n" "$plugins"
}

# Node N's enabled_plugins file; a broker reads it when it starts.
write_plugins() {
  echo "[$2]." >"$(node_dir "$1")/enabled_plugins"
}

# Node N's environment for the RabbitMQ tools (and none of the machine's own RabbitMQ's), in the
# array node_env.
set_node_env() {
  local nd
  nd=$(node_dir "$1")
  load_node "$1"
  node_env=(
    HOME="$dir/home"
    RABBITMQ_CONF_ENV_FILE=/dev/null
    RABBITMQ_NODENAME="$node"
    RABBITMQ_NODE_PORT="$amqp"
    RABBITMQ_DIST_PORT="$dist"
    RABBITMQ_CONFIG_FILE="$nd/rabbitmq.conf"
    RABBITMQ_ADVANCED_CONFIG_FILE="$nd/advanced.config"
    RABBITMQ_ENABLED_PLUGINS_FILE="$nd/enabled_plugins"
    RABBITMQ_MNESIA_BASE="$nd/mnesia"
    RABBITMQ_LOG_BASE="$nd/log"
    RABBITMQ_PID_FILE="$nd/beam.pid"
    ERL_CRASH_DUMP="$nd/log/erl_crash.dump"
    ERL_EPMD_ADDRESS=127.0.0.1
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+sbwt none +sbwtdcpu none +sbwtdio none"
  )
}

# rabbitmqctl against node N.
ctl() {
  local n=$1
  shift
  set_node_env "$n"
  env "${node_env[@]}" "$sbin/rabbitmqctl" -q -n "$node" "$@"
}

# The pid of a process of node N named in FILE, if it is alive (pids are reused: the process must
# carry the node's name in its environment).
live_pid() {
  local n=$1 file pid environ
  file="$(node_dir "$n")/$2"
  [ -s "$file" ] || return 1
  pid=$(<"$file")
  environ=$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ") || return 1
  grep -qxF "RABBITMQ_NODENAME=$(node_name "$n")" <<<"$environ" || return 1
  echo "$pid"
}

# The Erlang VM (beam.smp) writes beam.pid early in its boot; the launcher (the rabbitmq-server
# script, the VM's parent) lives exactly as long as the VM.
beam_pid() { live_pid "$1" beam.pid; }
alive() { live_pid "$1" launcher.pid >/dev/null || beam_pid "$1" >/dev/null; }

launch() {
  local n=$1 nd
  nd=$(node_dir "$n")
  load_node "$n"
  rm -f "$nd/beam.pid"
  log "starting $node (AMQP 127.0.0.1:$amqp, log $nd/log/$node.log)"
  # Not -detached: the launcher's output (errors before logging starts) goes to console.log.
  # setsid: the node outlives this script and the terminal.
  set_node_env "$n"
  echo "==> $(date -u '+%F %T') starting $node" >>"$nd/log/console.log"
  exec env "${node_env[@]}" setsid "$sbin/rabbitmq-server" </dev/null >>"$nd/log/console.log" 2>&1 &
  launched[$n]=$!
  echo "${launched[$n]}" >"$nd/launcher.pid"
  # `alive` knows the launcher by the node name in its environment, there once env has run.
  local i
  for i in $(seq 1 50); do
    alive "$n" && return 0
    sleep 0.1
  done
  show_log "$n"
  die "$node exited at once (log above)"
}

# What node N printed since its last launch (a failure to boot is explained first), then the end
# of its log.
show_log() {
  local n=$1 nd
  nd=$(node_dir "$n")
  load_node "$n"
  {
    echo "--- $nd/log/console.log, since the last start"
    awk '/^==> .* starting /{text=""} {text=text $0 "\n"} END{printf "%s", text}' \
      "$nd/log/console.log" 2>/dev/null | head -n 40 || true
    echo "--- tail of $nd/log/$node.log"
    tail -n 30 "$nd/log/$node.log" 2>/dev/null || true
  } >&2
}

# How node N's launcher ended, once it has, into $ended: "exit status S" or "killed by signal N".
# Only a launcher this run started can be waited for, and not from a subshell.
launcher_end() {
  local pid=${launched[$1]:-} status=0
  ended="not started by this run"
  [ -n "$pid" ] || return 0
  wait "$pid" || status=$?
  if [ "$status" -gt 128 ]; then ended="killed by signal $((status - 128))"; else ended="exit status $status"; fi
}

# Waits until node N's broker has booted. Returns 1 at once if its VM exits (after showing why);
# fails when the node takes longer than the timeout.
await_node() {
  local n=$1 deadline=$((SECONDS + timeout))
  load_node "$n"
  # Each rabbitmqctl is an Erlang VM of its own: ask only once the node's VM is up.
  until beam_pid "$n" >/dev/null && ctl "$n" await_startup --timeout "$timeout" >/dev/null 2>&1; do
    if ! alive "$n"; then
      show_log "$n"
      launcher_end "$n"
      log "$node exited while starting (launcher: $ended; log above)"
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      show_log "$n"
      die "$node did not start within ${timeout}s (log above)"
    fi
    sleep 0.25
  done
}

# Whether node N belongs to node 1's cluster (by its own record of the members).
is_member() {
  [ "$(ctl "$1" eval "lists:member('$(node_name 1)', rabbit_nodes:all()).")" = true ]
}

# Runs `rabbitmqctl CMD` on each node N given, all at once.
ctl_each() {
  local cmd=$1 n i pids=()
  shift
  for n; do
    ctl "$n" "$cmd" >/dev/null &
    pids+=($!)
  done
  i=0
  for n; do
    wait "${pids[$i]}" || { show_log "$n"; die "$(node_name "$n"): $cmd failed (log above)"; }
    i=$((i + 1))
  done
}

# Nodes 2.. join node 1: their brokers stop together, join one at a time (each join changes the
# membership), then start together.
join_nodes() {
  local first n
  first=$(node_name 1)
  ctl_each stop_app "$@"
  for n; do
    log "$(node_name "$n") joins $first"
    ctl "$n" join_cluster "$first" >/dev/null || { show_log "$n"; die "$node could not join $first"; }
    write_plugins "$n" "$plugins"
  done
  ctl_each start_app "$@"
}

# The cluster members node N sees running, space-separated.
running_members() {
  ctl "$1" cluster_status --formatter json 2>/dev/null |
    grep -o '"running_nodes":\[[^]]*\]' | grep -o '"[^"]*@[^"]*"' | tr -d '"' | sort | tr '\n' ' '
}

# Waits until node N runs with every other live node of the cluster.
await_rejoined() {
  local n=$1 deadline=$((SECONDS + timeout)) m expected
  load_node "$n"
  while :; do
    expected=""
    for m in $(known_nodes); do
      if alive "$m"; then expected+="$(node_name "$m")"$'\n'; fi
    done
    expected=$(sort <<<"$expected" | sed '/^$/d' | tr '\n' ' ')
    [ "$(running_members "$n")" = "$expected" ] && return 0
    if [ "$SECONDS" -ge "$deadline" ]; then
      show_log "$n"
      die "$node did not rejoin the cluster within ${timeout}s (expected running: $expected)"
    fi
    sleep 0.5
  done
}

cmd_start() {
  check_settings
  ensure_cookie
  local n started=() joiners=()
  for n in $(seq 1 "$size"); do
    if alive "$n"; then
      log "$(node_name "$n") is already running"
    elif [ "$n" -gt 1 ] && [ -z "$(ls -A "$(node_dir "$n")/mnesia" 2>/dev/null)" ]; then
      # A new node boots alone and joins once booted. Its plugins are enabled as it joins: a
      # broker with rabbitmq_prometheus takes 5 s longer to stop for the join.
      write_node "$n"
      write_plugins "$n" ""
      launch "$n"
      started+=("$n")
      joiners+=("$n")
    else
      write_node "$n"
      launch "$n"
      started+=("$n")
    fi
  done
  # The nodes boot in parallel; a member that ran before waits for its peers' tables by itself.
  for n in "${started[@]}"; do
    await_node "$n" || die "$(node_name "$n") exited while starting (log above)"
  done
  # A member from an earlier start that never joined (the start was interrupted) joins now.
  for n in $(seq 2 "$size"); do
    [[ " ${joiners[*]} " == *" $n "* ]] || is_member "$n" || joiners+=("$n")
  done
  [ ${#joiners[@]} -eq 0 ] || join_nodes "${joiners[@]}"
  cmd_where
}

cmd_where() {
  local n
  log "cluster folder: $dir (cookie in $dir/home/.erlang.cookie)"
  for n in $(known_nodes); do
    load_node "$n"
    printf '    %-24s amqp://guest:guest@127.0.0.1:%s/%%2f  log %s\n' \
      "$node" "$amqp" "$(node_dir "$n")/log/$node.log"
  done
}

cmd_stop() {
  local n pids=() failed=0
  for n in $(known_nodes); do
    if alive "$n"; then
      stop_node "$n" &
      pids+=($!)
    fi
  done
  for n in "${pids[@]}"; do wait "$n" || failed=1; done
  [ "$failed" -eq 0 ] || die "a node did not stop (see above)"
  log "all nodes stopped; data kept in $dir (remove the folder for a fresh cluster)"
}

stop_node() {
  local n=$1 nd pids
  nd=$(node_dir "$n")
  load_node "$n"
  if ! alive "$n"; then
    log "$node is not running"
    return 0
  fi
  log "stopping $node"
  # With the pid file, `stop` returns once the VM has exited.
  pids=$(node_pids "$n")
  if ! ctl "$n" stop "$nd/beam.pid" >/dev/null; then
    show_log "$n"
    die "$node did not stop"
  fi
  # shellcheck disable=SC2086
  wait_gone "$n" $pids
}

# Node N's live processes: its VM and the launcher.
node_pids() {
  beam_pid "$1" || true
  live_pid "$1" launcher.pid || true
}

# Waits until the processes (PIDS...) of node N have exited (zombies count as exited: the
# launcher's parent may be an init that reaps slowly).
wait_gone() {
  local n=$1 i pid state left
  shift
  for i in $(seq 1 100); do
    left=""
    for pid; do
      state=$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null) || state=""
      if [ -n "$state" ] && [ "$state" != Z ]; then left+=" $pid"; fi
    done
    [ -n "$left" ] || return 0
    sleep 0.1
  done
  die "node $n is still alive (pids$left)"
}

cmd_kill() {
  local n=$1 pid pids
  load_node "$n"
  pids=$(node_pids "$n")
  if pid=$(beam_pid "$n"); then
    log "SIGKILL $node (beam.smp pid $pid)"
    kill -KILL "$pid"
  elif pid=$(live_pid "$n" launcher.pid) && [ "$(cut -d' ' -f5 "/proc/$pid/stat")" = "$pid" ]; then
    # Booting, before the VM wrote its pid: the launcher leads a process group holding the VM.
    log "SIGKILL $node (still starting: process group $pid)"
    kill -KILL -- "-$pid"
  else
    log "$node is not running"
    return 0
  fi
  # shellcheck disable=SC2086
  wait_gone "$n" $pids
}

# Starts node N and waits for its broker. A VM that dies while booting after a crash is started
# again, twice at most: seen in CI as a VM gone within seconds with no line of output (neither in
# console.log nor in its log). The log and how the launcher ended are printed for each failure.
boot() {
  local n=$1 try
  for try in 1 2 3; do
    launch "$n"
    await_node "$n" && return 0
    if [ "$try" -lt 3 ]; then log "starting $node again (attempt $((try + 1)) of 3)"; fi
  done
  die "$node exited while starting, 3 times (logs above)"
}

cmd_restart() {
  local n=$1
  load_node "$n"
  check_sbin
  if alive "$n"; then
    log "$node is already running"
  else
    boot "$n"
  fi
  await_rejoined "$n"
  log "$node is running, in the cluster with: $(running_members "$n")"
}

cmd_status() {
  local n any=""
  for n in $(known_nodes); do
    load_node "$n"
    if alive "$n"; then
      printf '%-24s running (pid %s, amqp %s)\n' "$node" "$(beam_pid "$n" || echo '?')" "$amqp"
      [ -n "$any" ] || any=$n
    else
      printf '%-24s stopped\n' "$node"
    fi
  done
  [ -n "$(known_nodes)" ] || { echo "no cluster in $dir"; return 0; }
  if [ -n "$any" ]; then
    ctl "$any" cluster_status
  fi
}

main() {
  local command=${1:-} n=${2:-}
  case $command in
    kill | restart | stop-node | ctl) [[ $n =~ ^[1-9][0-9]*$ ]] || usage ;;
  esac
  case $command in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    kill) cmd_kill "$n" ;;
    restart) cmd_restart "$n" ;;
    stop-node) stop_node "$n" ;;
    ctl) ctl "$n" "${@:3}" ;;
    *) usage ;;
  esac
}

main "$@"
