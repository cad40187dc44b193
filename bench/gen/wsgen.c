/*
 * The benchmark's load generator: one game server and N phones of the carparty protocol, against
 * relayd or a peer relay, in C on one epoll loop so that it is never the bottleneck (the runner
 * shows its CPU share beside the server's). bench/run.py builds it with the machine's cc.
 *
 *   wsgen MODE port=P path=/carparty/ws [key=value ...]
 *   wsgen MODE ports=P1,P2,P3 ...     several relayd nodes of one cluster: connection i to node i mod n
 *   wsgen fanout app=wikispeedruns|clicker ...   the same fan-out through another app's protocol:
 *            lobby prompt `refresh` to everyone following a lobby, or a scoring device's SCORE lines
 *            to the judges' screens that LISTEN to it (default app=carparty)
 *
 * Modes:
 *   fanout   one sender, `receivers` phones, `messages` frames each; `window` frames in flight per
 *            phone (64: "many", 1: lock-step, the next frame only once every phone has the last)
 *   rate     one sender at `rate` frames/s for `seconds`; each frame carries its send time, each
 *            phone records the delivery latency (p50, p99)
 *   connect  `connections` phones opened with `concurrency` handshakes in flight (handshakes/s),
 *            then held idle, answering pings, until the runner says go
 *   churn    `concurrency` phones at a time, each: connect, handshake, log in, close handshake,
 *            for `seconds` (connection cycles/s)
 *   gameroom 4 players for each room path in `rooms_file` (gameroom protocol): join, ready, and
 *            answer every master packet with the next turn's commands and a state hash; counts
 *            the master packets received over `seconds`
 *
 * The runner drives phases over stdin/stdout: the generator prints READY when set up and waits for
 * "go"; in connect mode it prints OPEN when every phone is up and waits for "go" again; it prints
 * DONE when the traffic is over, waits for "bye" and prints one JSON line. Pings are answered in
 * every phase.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { CONNECTING, UPGRADING, OPEN, CLOSING, DEAD };
enum { PAYLOAD = 100, HIST_US = 1000000 };

typedef struct {
    int fd, state, index, port;
    char *in;
    size_t in_len, in_cap;
    char *out;
    size_t out_len, out_cap;
    long count;
    int watching_out;
    const char *path;
} Conn;

static struct {
    const char *mode, *path, *rooms_file, *app;
    int port, receivers, window, connections, concurrency;
    long messages;
    double rate, seconds;
    int nports, ports[16];
} cfg = {.mode = "fanout", .path = "/", .app = "carparty", .receivers = 10, .window = 64, .connections = 1000, .concurrency = 64,
         .messages = 1000, .rate = 500, .seconds = 5};

static int ep;
static Conn **conns;
static char code[32];
static long turns, started_players, game_errors;
static long delivered, malformed, closed_early, errors, handshakes, cycles;
static unsigned *hist;
static long hist_over, hist_n;
static int recording;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + t.tv_nsec;
}

static double cpu_seconds(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6 + r.ru_stime.tv_sec + r.ru_stime.tv_usec / 1e6;
}

static void die(const char *what) {
    printf("{\"error\": \"%s: %s\"}\n", what, strerror(errno));
    fflush(stdout);
    exit(1);
}

static void watch(Conn *c, int out) {
    if (c->watching_out == out) return;
    c->watching_out = out;
    struct epoll_event e = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
}

static long unflushed;  /* the sender's frames gathered and not yet written */
static Conn *sender;

static void flush_out(Conn *c) {
    if (c == sender) unflushed = 0;
    while (c->out_len) {
        ssize_t n = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) {
                watch(c, 1);
                return;
            }
            c->out_len = 0;
            return;
        }
        memmove(c->out, c->out + n, c->out_len - n);
        c->out_len -= n;
    }
    watch(c, 0);
}

/* Connections with output gathered this loop turn: written when FLUSH_AT bytes are waiting (the
 * server gets work while the generator goes on) and otherwise once each when the turn's events are
 * handled (flush_dirty): a sender answering many deliveries makes a send per twenty frames, not one each. */
enum { FLUSH_AT = 2048 };
static Conn **dirty;
static size_t dirty_len, dirty_cap;

static void put(Conn *c, const char *data, size_t len) {
    if (c->out_len + len > c->out_cap) {
        c->out_cap = (c->out_len + len) * 2;
        c->out = realloc(c->out, c->out_cap);
    }
    memcpy(c->out + c->out_len, data, len);
    int was_empty = c->out_len == 0;
    c->out_len += len;
    if (c->out_len >= FLUSH_AT && !c->watching_out) {
        flush_out(c);  /* it stays listed in dirty, if it is: flush_dirty skips it once empty */
        return;
    }
    if (was_empty && !c->watching_out) {
        if (dirty_len == dirty_cap) {
            dirty_cap = dirty_cap ? dirty_cap * 2 : 1024;
            dirty = realloc(dirty, dirty_cap * sizeof *dirty);
        }
        dirty[dirty_len++] = c;
    }
}

static int holds_back(Conn *c);

static void flush_dirty(void) {
    /* a connection closed since it was listed has no output (close_conn clears it); one that
     * holds its output back for now stays listed */
    size_t kept = 0;
    for (size_t i = 0; i < dirty_len; i++) {
        Conn *c = dirty[i];
        if (c->state == DEAD || !c->out_len) continue;
        if (holds_back(c)) dirty[kept++] = c;
        else flush_out(c);
    }
    dirty_len = kept;
}

/* A client frame, masked as RFC 6455 requires of clients, into out; returns its length (0: too long). */
static size_t build_frame(char *out, int opcode, const char *payload, size_t len) {
    static const unsigned char mask[4] = {0x37, 0xfa, 0x21, 0x3d};
    size_t h = 0;
    if (len > 4096) return 0;
    out[h++] = (char)(0x80 | opcode);
    if (len < 126) {
        out[h++] = (char)(0x80 | len);
    } else {
        out[h++] = (char)(0x80 | 126);
        out[h++] = (char)(len >> 8);
        out[h++] = (char)(len & 0xff);
    }
    memcpy(out + h, mask, 4);
    h += 4;
    uint32_t m, w;
    memcpy(&m, mask, 4);
    size_t i = 0;
    for (; i + 4 <= len; i += 4) {
        memcpy(&w, payload + i, 4);
        w ^= m;
        memcpy(out + h + i, &w, 4);
    }
    for (; i < len; i++) out[h + i] = payload[i] ^ mask[i & 3];
    return h + len;
}

static void send_frame(Conn *c, int opcode, const char *payload, size_t len) {
    char frame[16 + 4096];
    size_t n = build_frame(frame, opcode, payload, len);
    if (n) put(c, frame, n);
}

static void send_text(Conn *c, const char *text) { send_frame(c, 1, text, strlen(text)); }

static Conn *open_conn(int index) {
    Conn *c = calloc(1, sizeof *c);
    c->index = index;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) die("socket");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* with several nodes (ports=P1,P2,..) connection i goes to node i mod n: the game server to the first */
    int port = cfg.nports ? cfg.ports[index % cfg.nports] : cfg.port;
    c->port = port;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) die("connect");
    c->state = CONNECTING;
    c->watching_out = 1;
    struct epoll_event e = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &e);
    return c;
}

static void close_conn(Conn *c) {
    if (c->state == DEAD) return;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->state = DEAD;
    c->out_len = 0;
}

static void free_conn(Conn *c) {
    close_conn(c);
    for (size_t i = 0; i < dirty_len; i++)
        if (dirty[i] == c) dirty[i] = dirty[--dirty_len], i--;
    free(c->in);
    free(c->out);
    free(c);
}

/* app=wikispeedruns: everyone follows one lobby's prompt list; the sender triggers `refresh`.
 * app=clicker: the sender is a scoring device, the receivers judges' screens listening to it. */
static char device_id[16];

static int app_is(const char *name) { return !strcmp(cfg.app, name); }

/* the mode and app, decided once in main: asked for every message */
static int is_fanout, is_rate, is_churn, is_gameroom, is_wiki, is_clicker;

static void login(Conn *c) {
    char text[160];
    if (app_is("wikispeedruns")) {
        snprintf(text, sizeof text, "{\"type\":\"lobby_prompts\",\"lobby_id\":\"%s\"}", code);
        send_text(c, text);
        return;
    }
    if (app_is("clicker")) {
        if (c->index == 0) return send_text(c, "REGISTER");
        if (!device_id[0]) die("the scoring device has no id yet");
        snprintf(text, sizeof text, "LISTEN %s", device_id);
        return send_text(c, text);
    }
    if (c->index == 0)
        snprintf(text, sizeof text, "{\"action\":\"login_server\",\"server_code\":\"%s\"}", code);
    else
        snprintf(text, sizeof text, "{\"action\":\"login_client\",\"server_code\":\"%s\",\"client_id\":\"%d\"}", code, c->index);
    send_text(c, text);
}

static void on_upgraded(Conn *c);
static void on_message(Conn *c, const char *payload, size_t len);
static void on_closed(Conn *c);

/* Frames from the server: unmasked. Returns bytes consumed, 0 when a frame is incomplete. */
static size_t parse_frame(Conn *c, const unsigned char *p, size_t n) {
    if (n < 2) return 0;
    int opcode = p[0] & 0x0f;
    uint64_t len = p[1] & 0x7f;
    size_t h = 2;
    if (len == 126) {
        if (n < 4) return 0;
        len = ((uint64_t)p[2] << 8) | p[3];
        h = 4;
    } else if (len == 127) {
        if (n < 10) return 0;
        len = 0;
        for (int i = 0; i < 8; i++) len = (len << 8) | p[2 + i];
        h = 10;
    }
    if (n < h + len) return 0;
    const char *payload = (const char *)p + h;
    if (opcode == 9) {
        send_frame(c, 10, payload, len);
    } else if (opcode == 8) {
        if (c->state == OPEN) send_frame(c, 8, payload, len < 2 ? len : 2);
        on_closed(c);
    } else if (opcode <= 2 && (p[0] & 0x80)) {
        on_message(c, payload, len);
    }
    return h + len;
}

static void on_readable(Conn *c) {
    for (;;) {
        if (c->in_cap - c->in_len < 65536) {
            c->in_cap = c->in_cap ? c->in_cap * 2 : 131072;
            c->in = realloc(c->in, c->in_cap);
        }
        ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN)) {
            on_closed(c);
            return;
        }
        if (n < 0) break;
        c->in_len += n;
        size_t at = 0;
        if (c->state == UPGRADING) {
            char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
            if (!end) continue;
            if (c->in_len < 12 || memcmp(c->in + 9, "101", 3) != 0) {
                errors++;
                on_closed(c);
                return;
            }
            at = end + 4 - c->in;
            c->state = OPEN;
            on_upgraded(c);
        }
        while (c->state == OPEN || c->state == CLOSING) {
            size_t used = parse_frame(c, (unsigned char *)c->in + at, c->in_len - at);
            if (!used) break;
            at += used;
        }
        if (c->state == DEAD) return;
        memmove(c->in, c->in + at, c->in_len - at);
        c->in_len -= at;
        if ((size_t)n < 65536) break;
    }
}

static void on_writable(Conn *c) {
    if (c->state == CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            errors++;
            on_closed(c);
            return;
        }
        char request[512];
        int n = snprintf(request, sizeof request,
                         "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                         c->path ? c->path : cfg.path, c->port);
        c->state = UPGRADING;
        put(c, request, n);
        flush_out(c);
        return;
    }
    flush_out(c);
}

/* ---- the scenarios ------------------------------------------------------------------------ */

static long sent, total;

/* Many in flight: while at least half the window is on the wire the server has work, so the
 * sender's next frames wait to go out together (at FLUSH_AT bytes, or once the wire runs low):
 * a server that writes every frame on its own still costs the generator one read per frame, and
 * no longer a send as well. Lock-step and fixed-rate frames go out at once. */
static int holds_back(Conn *c) {
    if (c != sender || !is_fanout || cfg.window < 4) return 0;
    long on_wire = (sent - unflushed) * cfg.receivers - delivered;
    return on_wire >= (long)cfg.window * cfg.receivers / 2;
}
static double started;
static int finished;
static int pending_upgrades;

static void payload_at(char *out, uint64_t ns) {
    /* {"t":"<19 digits>","p":"xxx...x"} padded to exactly PAYLOAD bytes */
    int n = snprintf(out, PAYLOAD + 1, "{\"t\":\"%019llu\",\"p\":\"", (unsigned long long)ns);
    memset(out + n, 'x', PAYLOAD - n - 2);
    out[PAYLOAD - 2] = '"';
    out[PAYLOAD - 1] = '}';
}

static void send_payload(void) {
    char p[PAYLOAD + 1];
    /* fan-out frames carry no time (only rate mode reads it): one frame, built once, copied */
    static char fixed[16 + PAYLOAD];
    static size_t fixed_len;
    if (is_fanout && !is_wiki && !is_clicker) {
        if (!fixed_len) {
            payload_at(p, 0);
            fixed_len = build_frame(fixed, 1, p, PAYLOAD);
        }
        unflushed++;
        sent++;
        put(sender, fixed, fixed_len);
        return;
    }
    unflushed++;  /* before put: a put that reaches FLUSH_AT writes it, and counts it written */
    if (is_wiki) {
        send_text(sender, "{\"type\":\"lobby_prompts_update\"}");
    } else if (is_clicker) {
        snprintf(p, sizeof p, "SCORE %ld %ld", sent + 1, sent);
        send_text(sender, p);
    } else {
        payload_at(p, now_ns());
        send_frame(sender, 1, p, PAYLOAD);
    }
    sent++;
}

/* whether a receiver's frame is one delivery of the scenario (0: a notice to skip, -1: malformed) */
static int is_delivery(const char *payload, size_t len) {
    if (is_wiki) return len == 7 && !memcmp(payload, "refresh", 7) ? 1 : -1;
    if (is_clicker) {
        if (len >= 8 && !memcmp(payload, "CONNECT", 7)) return 0;
        return len > 6 && !memcmp(payload, "SCORE ", 6) ? 1 : -1;
    }
    return len == PAYLOAD ? 1 : -1;
}

static void pump(void) {
    if (is_fanout)
        while (sent < cfg.messages && sent * cfg.receivers - delivered < (long)cfg.window * cfg.receivers) send_payload();
}

static void gameroom_message(Conn *c, const char *payload, size_t len) {
    char text[256];
    const char *turn_at;
    if (memmem(payload, len, "\"type\":\"turn\"", 13) && (turn_at = memmem(payload, len, "\"turn\":", 7))) {
        long turn = strtol(turn_at + 7, NULL, 10);
        turns++;
        snprintf(text, sizeof text,
                 "{\"type\":\"commands\",\"turn\":%ld,\"commands\":[{\"add\":1}],\"hash\":\"h%ld\",\"hash_turn\":%ld}",
                 turn + 1, turn, turn);
        send_text(c, text);
    } else if (memmem(payload, len, "\"type\":\"welcome\"", 16)) {
        send_text(c, "{\"type\":\"ready\",\"ready\":true}");
    } else if (memmem(payload, len, "\"type\":\"start\"", 14)) {
        started_players++;
        send_text(c, "{\"type\":\"commands\",\"turn\":0,\"commands\":[]}");
    } else if (memmem(payload, len, "\"type\":\"error\"", 14) || memmem(payload, len, "\"type\":\"halted\"", 15)) {
        game_errors++;
    }
}

static void on_message(Conn *c, const char *payload, size_t len) {
    if (is_gameroom) return gameroom_message(c, payload, len);
    if (c->index == 0) {
        /* notices of phones joining, SCORED acks, the sender's own refresh; the device learns its id
         * (its REGISTERED may arrive before `sender` is set) */
        if (is_clicker && len > 11 && !memcmp(payload, "REGISTERED ", 11) && !device_id[0])
            sscanf(payload + 11, "%15[0-9]", device_id);
        return;
    }
    int kind = is_delivery(payload, len);
    if (kind <= 0) {
        if (kind < 0) malformed++;
        return;
    }
    c->count++;
    delivered++;
    if (recording) {
        uint64_t ts = strtoull(payload + 6, NULL, 10);
        uint64_t us = (now_ns() - ts) / 1000;
        if (us < HIST_US)
            hist[us]++;
        else
            hist_over++;
        hist_n++;
    }
    if (is_fanout) {
        if (delivered == total) finished = 1;
        else if (delivered % cfg.receivers == 0) pump();
    }
}

static void on_upgraded(Conn *c) {
    handshakes++;
    pending_upgrades--;
    if (!strcmp(cfg.mode, "gameroom")) return send_text(c, "{\"type\":\"join\"}");
    login(c);
    if (!strcmp(cfg.mode, "churn") && c->index > 0) send_frame(c, 8, "\x03\xe8", 2), c->state = CLOSING;
}

static void on_closed(Conn *c) {
    int was_open = c->state == OPEN, was_closing = c->state == CLOSING;
    if (c->state == UPGRADING || c->state == CONNECTING) pending_upgrades--;
    close_conn(c);
    if (!strcmp(cfg.mode, "churn") && c->state == DEAD && c->index > 0) {
        if (was_closing) cycles++;
        return;
    }
    if (was_open && c->index > 0 && !strcmp(cfg.mode, "fanout") && c->count < cfg.messages) closed_early++;
}

/* What the runner wrote on stdin, read as it comes so that the loop never blocks on it. */
static char lines[256];
static size_t lines_len;
static int waiting_line;

static void read_stdin(void) {
    ssize_t n = read(0, lines + lines_len, sizeof lines - 1 - lines_len);
    if (n <= 0) exit(0);
    lines_len += n;
}

static int next_line(char *out, size_t cap) {
    char *nl = memchr(lines, '\n', lines_len);
    if (!nl) return 0;
    size_t len = nl - lines;
    snprintf(out, cap, "%.*s", (int)len, lines);
    memmove(lines, nl + 1, lines_len - len - 1);
    lines_len -= len + 1;
    return 1;
}

/* Runs the loop for up to `seconds` (forever if < 0), until `*until` is set or stdin has a line. */
static int run(double seconds, int *until) {
    struct epoll_event events[512];
    double end = seconds < 0 ? 1e18 : now() + seconds;
    while (now() < end && !(until && *until)) {
        flush_dirty();
        int timeout = 50;
        if (is_rate && started) timeout = 1;
        int n = epoll_wait(ep, events, 512, timeout);
        for (int i = 0; i < n; i++) {
            Conn *c = events[i].data.ptr;
            if (!c) {
                read_stdin();
                if (waiting_line && memchr(lines, '\n', lines_len)) return 1;
                continue;
            }
            if (c->state == DEAD) continue;
            if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c);
            if (c->state != DEAD && (events[i].events & EPOLLOUT)) on_writable(c);
        }
        if (is_rate && started) {
            long due = (long)((now() - started) * cfg.rate);
            while (sent < due) send_payload();
        }
        if (is_churn && started) {
            for (int i = 1; i <= cfg.concurrency; i++)
                if (conns[i]->state == DEAD) {
                    free_conn(conns[i]);
                    conns[i] = open_conn(i);
                    pending_upgrades++;
                }
        }
    }
    flush_dirty();
    return 0;
}

static void wait_line(const char *expect) {
    char line[64];
    for (;;) {
        while (next_line(line, sizeof line))
            if (!strcmp(line, expect)) return;
        waiting_line = 1;
        run(-1, NULL);
        waiting_line = 0;
    }
}

static double percentile(double q) {
    long want = (long)(q * hist_n), seen = 0;
    for (long us = 0; us < HIST_US; us++) {
        seen += hist[us];
        if (seen > want) return us / 1000.0;
    }
    return HIST_US / 1000.0;
}

static void open_all(int first, int last) {
    for (int i = first; i <= last;) {
        if (pending_upgrades < cfg.concurrency) {
            conns[i] = open_conn(i);
            pending_upgrades++;
            i++;
        } else {
            run(0.001, NULL);
        }
    }
    while (pending_upgrades > 0) run(0.01, NULL);
}

static int gameroom(void) {
    FILE *f = fopen(cfg.rooms_file, "r");
    if (!f) die("rooms_file");
    char path[512];
    int rooms = 0, players = 0;
    conns = calloc(4 * 20000, sizeof *conns);
    while (fgets(path, sizeof path, f) && rooms < 20000) {
        path[strcspn(path, "\n")] = 0;
        if (!*path) continue;
        char *copy = strdup(path);
        for (int p = 0; p < 4; p++) {
            while (pending_upgrades >= cfg.concurrency) run(0.001, NULL);
            conns[players] = open_conn(players + 1);
            conns[players]->path = copy;
            players++;
            pending_upgrades++;
        }
        rooms++;
    }
    fclose(f);
    while (pending_upgrades > 0) run(0.01, NULL);
    double deadline = now() + 30;
    while (started_players < players && now() < deadline) run(0.05, NULL);
    run(1.0, NULL); /* the first turns settle */
    printf("READY\n");
    wait_line("go");
    double cpu0 = cpu_seconds(), t0 = now();
    long turns0 = turns, errors0 = game_errors;
    run(cfg.seconds, NULL);
    double seconds = now() - t0, cpu = cpu_seconds() - cpu0;
    long got = turns - turns0;
    printf("DONE\n");
    wait_line("bye");
    printf("{\"mode\": \"gameroom\", \"rooms\": %d, \"players\": %d, \"started_players\": %ld, \"seconds\": %.6f, "
           "\"generator_cpu_s\": %.6f, \"errors\": %ld, \"game_errors\": %ld, \"turns_received\": %ld, "
           "\"turns_per_room_s\": %.3f}\n",
           rooms, players, started_players, seconds, cpu, errors, game_errors - errors0, got,
           got / 4.0 / (rooms ? rooms : 1) / seconds);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: wsgen fanout|rate|connect|churn port=P path=/x [key=value ...]\n");
        return 2;
    }
    cfg.mode = argv[1];
    for (int i = 2; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq) continue;
        *eq = 0;
        const char *k = argv[i], *v = eq + 1;
        if (!strcmp(k, "port")) cfg.port = atoi(v);
        else if (!strcmp(k, "ports"))
            for (char *p = (char *)v; *p && cfg.nports < 16; p = strchr(p, ',') ? strchr(p, ',') + 1 : p + strlen(p))
                cfg.ports[cfg.nports++] = atoi(p);
        else if (!strcmp(k, "path")) cfg.path = v;
        else if (!strcmp(k, "rooms_file")) cfg.rooms_file = v;
        else if (!strcmp(k, "app")) cfg.app = v;
        else if (!strcmp(k, "receivers")) cfg.receivers = atoi(v);
        else if (!strcmp(k, "window")) cfg.window = atoi(v);
        else if (!strcmp(k, "messages")) cfg.messages = atol(v);
        else if (!strcmp(k, "rate")) cfg.rate = atof(v);
        else if (!strcmp(k, "seconds")) cfg.seconds = atof(v);
        else if (!strcmp(k, "connections")) cfg.connections = atoi(v);
        else if (!strcmp(k, "concurrency")) cfg.concurrency = atoi(v);
    }
    is_fanout = !strcmp(cfg.mode, "fanout");
    is_rate = !strcmp(cfg.mode, "rate");
    is_churn = !strcmp(cfg.mode, "churn");
    is_gameroom = !strcmp(cfg.mode, "gameroom");
    is_wiki = app_is("wikispeedruns");
    is_clicker = app_is("clicker");
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    srand((unsigned)now_ns());
    snprintf(code, sizeof code, "B%d", rand() % 1000000000);
    ep = epoll_create1(0);
    struct epoll_event in = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &in);
    setvbuf(stdout, NULL, _IOLBF, 0);

    if (!strcmp(cfg.mode, "gameroom")) return gameroom();
    int phones = !strcmp(cfg.mode, "connect") ? cfg.connections : !strcmp(cfg.mode, "churn") ? cfg.concurrency : cfg.receivers;
    conns = calloc(phones + 1, sizeof *conns);
    /* the game server first, alone, so that phones find it */
    int saved = cfg.concurrency;
    cfg.concurrency = 1;
    open_all(0, 0);
    cfg.concurrency = saved;
    sender = conns[0];
    if (sender->state != OPEN) die("the game server did not connect");
    run(0.2, NULL);

    double cpu0, t0, open_seconds = 0;
    if (!strcmp(cfg.mode, "connect") || !strcmp(cfg.mode, "churn")) {
        printf("READY\n");
        wait_line("go");
        cpu0 = cpu_seconds();
        t0 = now();
        handshakes = 0;
        if (!strcmp(cfg.mode, "connect")) {
            open_all(1, phones);
            open_seconds = now() - t0;
            run(0.5, NULL); /* logins land */
            printf("OPEN\n");
            wait_line("go");
        } else {
            started = t0;
            for (int i = 1; i <= phones; i++) conns[i] = open_conn(i), pending_upgrades++;
            run(cfg.seconds, NULL);
            open_seconds = now() - t0;
        }
    } else {
        open_all(1, phones);
        run(0.3 + phones / 1000.0, NULL);
        hist = calloc(HIST_US, sizeof *hist);
        total = cfg.messages * cfg.receivers;
        printf("READY\n");
        wait_line("go");
        cpu0 = cpu_seconds();
        t0 = now();
        if (!strcmp(cfg.mode, "fanout")) {
            started = t0;
            pump();
            run(120, &finished);
        } else {
            started = t0;
            recording = 0;
            run(0.5, NULL); /* warm-up, not recorded */
            recording = 1;
            run(cfg.seconds, NULL);
            recording = 0;
            started = 0;
            run(1.0, NULL); /* what is still in flight */
            total = sent * cfg.receivers;
        }
    }
    double seconds = now() - t0, cpu = cpu_seconds() - cpu0;
    printf("DONE\n");
    wait_line("bye");
    printf("{\"mode\": \"%s\", \"receivers\": %d, \"seconds\": %.6f, \"generator_cpu_s\": %.6f, \"errors\": %ld",
           cfg.mode, phones, seconds, cpu, errors);
    if (!strcmp(cfg.mode, "fanout"))
        printf(", \"messages\": %ld, \"sent\": %ld, \"expected\": %ld, \"delivered\": %ld, \"deliveries_per_s\": %.1f, "
               "\"lost\": %ld, \"malformed\": %ld, \"closed_early\": %ld",
               cfg.messages, sent, total, delivered, delivered / seconds, total - delivered, malformed, closed_early);
    else if (!strcmp(cfg.mode, "rate"))
        printf(", \"rate\": %.0f, \"sent\": %ld, \"expected\": %ld, \"delivered\": %ld, \"lost\": %ld, \"malformed\": %ld, "
               "\"latency_samples\": %ld, \"p50_ms\": %.3f, \"p99_ms\": %.3f, \"over_1s\": %ld",
               cfg.rate, sent, total, delivered, total - delivered, malformed, hist_n, percentile(0.5),
               percentile(0.99), hist_over);
    else if (!strcmp(cfg.mode, "connect"))
        printf(", \"connections\": %d, \"handshakes\": %ld, \"open_seconds\": %.6f, \"handshakes_per_s\": %.1f",
               phones, handshakes, open_seconds, handshakes / open_seconds);
    else
        printf(", \"cycles\": %ld, \"cycles_per_s\": %.1f", cycles, cycles / open_seconds);
    printf("}\n");
    return 0;
}
