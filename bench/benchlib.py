"""Shared helpers of the benchmark harnesses."""
import os
import socket
import subprocess
import sys
import time


def run_rusage(cmd, check=True, env=None):
    """Runs cmd; returns wall seconds (spawn to exit), CPU seconds (user + system, and each) and peak
    RSS from wait4."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if check and code != 0:
        sys.exit(f"{' '.join(cmd[:4])} failed ({code}): {err.decode()[-2000:]}")
    return {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "user": ru.ru_utime, "sys": ru.ru_stime,
            "rss_mib": ru.ru_maxrss / 1024.0,
            "out": out.decode(), "code": code}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_nginx(workdir, docroot, caps, access_log=False):
    """nginx on loopback serving docroot, one server per entry of caps (name -> per-connection
    bytes/s for limit_rate, None for no cap). With access_log, workdir/access.log gets the bytes
    sent, one number per request. Returns (process, {name: port})."""
    conf = os.path.join(workdir, "nginx.conf")
    ports = {name: free_port() for name in caps}
    servers = "\n".join(
        f"  server {{ listen 127.0.0.1:{ports[n]}; root {docroot}; autoindex on;"
        + (f" limit_rate {cap};" if cap else "") + " }" for n, cap in caps.items())
    log = (f"  log_format sent '$bytes_sent';\n  access_log {workdir}/access.log sent;" if access_log
           else "  access_log off;")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes 2;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
{log}
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  client_body_temp_path {workdir}/tmp;
  proxy_temp_path {workdir}/tmp;
  fastcgi_temp_path {workdir}/tmp;
  uwsgi_temp_path {workdir}/tmp;
  scgi_temp_path {workdir}/tmp;
  types {{ application/octet-stream safetensors; application/json json; }}
{servers}
}}
""")
    os.makedirs(os.path.join(workdir, "tmp"), exist_ok=True)
    p = subprocess.Popen(["nginx", "-c", conf, "-p", workdir], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = next(iter(ports.values()))
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", first), timeout=0.1).close()
            return p, ports
        except OSError:
            time.sleep(0.05)
    p.kill()
    sys.exit("nginx did not start: " + p.stderr.read().decode())
