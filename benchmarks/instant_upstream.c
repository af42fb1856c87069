/* An instant OpenAI-style upstream for bench_gateway_capacity.py: one thread, epoll,
 * HTTP/1.1 keep-alive and pipelining. It answers at once, so whatever sits in front of it
 * is the bottleneck.
 *
 *   POST (any path), body with "stream": true -> an SSE stream of CHUNKS content events,
 *       a usage event and [DONE], chunked; with --chunk-writes each event is its own
 *       write (its own TCP segment), else the whole answer is one write
 *   POST otherwise -> a chat.completion with usage
 *   GET (any path) -> 200 with a small JSON body (health, models, metrics)
 *
 *   cc -O2 -o instant_upstream instant_upstream.c && ./instant_upstream PORT [--chunk-writes]
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define CHUNKS 16
#define BUF 65536
#define MAXFD 65536

struct conn {
    char in[BUF];
    size_t len;
    char *out; /* what a full socket buffer left unsent */
    size_t out_len, out_off;
};

static struct conn *conns[MAXFD];
static int chunk_writes;
static char json_answer[1024], get_answer[256], sse_head[256], sse_event[512], sse_tail[512];
static size_t json_len, get_len, sse_head_len, sse_event_len, sse_tail_len;
static char sse_whole[16384];
static size_t sse_whole_len;

static void build_answers(void) {
    const char *body =
        "{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion\",\"created\":0,"
        "\"model\":\"bench\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
        "\"content\":\"Paris is the capital of France.\"},\"finish_reason\":\"stop\"}],"
        "\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":16,\"total_tokens\":28}}";
    json_len = (size_t)snprintf(json_answer, sizeof json_answer,
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                "content-length: %zu\r\n\r\n%s",
                                strlen(body), body);
    const char *gbody = "{\"object\":\"list\",\"data\":[]}";
    get_len = (size_t)snprintf(get_answer, sizeof get_answer,
                               "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                               "content-length: %zu\r\n\r\n%s",
                               strlen(gbody), gbody);
    sse_head_len = (size_t)snprintf(sse_head, sizeof sse_head,
                                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                                    "transfer-encoding: chunked\r\n\r\n");
    const char *ev =
        "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":0,"
        "\"model\":\"bench\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" word\"},"
        "\"finish_reason\":null}]}\n\n";
    sse_event_len = (size_t)snprintf(sse_event, sizeof sse_event, "%zx\r\n%s\r\n", strlen(ev), ev);
    const char *usage =
        "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":0,"
        "\"model\":\"bench\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,"
        "\"completion_tokens\":16,\"total_tokens\":28}}\n\ndata: [DONE]\n\n";
    sse_tail_len =
        (size_t)snprintf(sse_tail, sizeof sse_tail, "%zx\r\n%s\r\n0\r\n\r\n", strlen(usage), usage);
    sse_whole_len = 0;
    memcpy(sse_whole, sse_head, sse_head_len);
    sse_whole_len += sse_head_len;
    for (int i = 0; i < CHUNKS; i++) {
        memcpy(sse_whole + sse_whole_len, sse_event, sse_event_len);
        sse_whole_len += sse_event_len;
    }
    memcpy(sse_whole + sse_whole_len, sse_tail, sse_tail_len);
    sse_whole_len += sse_tail_len;
}

static void drop(int ep, int fd) {
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    if (conns[fd]) {
        free(conns[fd]->out);
        free(conns[fd]);
        conns[fd] = NULL;
    }
}

/* Send, keeping what the socket would not take for EPOLLOUT. 0: ok, -1: connection gone. */
static int send_all(int ep, int fd, struct conn *c, const char *p, size_t n) {
    if (c->out_len > c->out_off) { /* already queued: keep the order */
        c->out = realloc(c->out, c->out_len + n);
        memcpy(c->out + c->out_len, p, n);
        c->out_len += n;
        return 0;
    }
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN) return -1;
            free(c->out);
            c->out = malloc(n);
            memcpy(c->out, p, n);
            c->out_len = n;
            c->out_off = 0;
            struct epoll_event e = {.events = EPOLLIN | EPOLLOUT, .data.fd = fd};
            epoll_ctl(ep, EPOLL_CTL_MOD, fd, &e);
            return 0;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int answer(int ep, int fd, struct conn *c, const char *req, size_t head, size_t body_len) {
    if (strncmp(req, "GET ", 4) == 0) return send_all(ep, fd, c, get_answer, get_len);
    const char *body = req + head;
    int stream = 0;
    for (size_t i = 0; i + 8 <= body_len; i++) {
        if (memcmp(body + i, "\"stream\"", 8) == 0) {
            size_t j = i + 8;
            while (j < body_len && (body[j] == ' ' || body[j] == ':')) j++;
            stream = j + 4 <= body_len && memcmp(body + j, "true", 4) == 0;
            break;
        }
    }
    if (!stream) return send_all(ep, fd, c, json_answer, json_len);
    if (!chunk_writes) return send_all(ep, fd, c, sse_whole, sse_whole_len);
    if (send_all(ep, fd, c, sse_head, sse_head_len) < 0) return -1;
    for (int i = 0; i < CHUNKS; i++)
        if (send_all(ep, fd, c, sse_event, sse_event_len) < 0) return -1;
    return send_all(ep, fd, c, sse_tail, sse_tail_len);
}

/* Answer every whole request in the buffer. 0: ok, -1: drop the connection. */
static int serve(int ep, int fd, struct conn *c) {
    size_t off = 0;
    for (;;) {
        char *start = c->in + off;
        size_t avail = c->len - off;
        char *end = memmem(start, avail, "\r\n\r\n", 4);
        if (!end) break;
        size_t head = (size_t)(end - start) + 4, body_len = 0;
        for (char *line = strstr(start, "\r\n"); line && line < end; line = strstr(line + 2, "\r\n")) {
            if (strncasecmp(line + 2, "content-length:", 15) == 0) body_len = strtoul(line + 17, NULL, 10);
        }
        if (head + body_len > BUF) return -1;
        if (head + body_len > avail) break;
        if (answer(ep, fd, c, start, head, body_len) < 0) return -1;
        off += head + body_len;
    }
    memmove(c->in, c->in + off, c->len - off);
    c->len -= off;
    c->in[c->len] = 0;
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT [--chunk-writes]\n", argv[0]);
        return 2;
    }
    chunk_writes = argc > 2 && strcmp(argv[2], "--chunk-writes") == 0;
    signal(SIGPIPE, SIG_IGN);
    build_answers();
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 4096) < 0) {
        perror("bind/listen");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event e = {.events = EPOLLIN, .data.fd = ls}, evs[256];
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &e);
    fprintf(stderr, "instant upstream on 127.0.0.1:%s%s\n", argv[1], chunk_writes ? " (a write per chunk)" : "");
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                int cfd;
                while ((cfd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (cfd >= MAXFD) {
                        close(cfd);
                        continue;
                    }
                    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conns[cfd] = calloc(1, sizeof(struct conn));
                    struct epoll_event ce = {.events = EPOLLIN, .data.fd = cfd};
                    epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &ce);
                }
                continue;
            }
            struct conn *c = conns[fd];
            if (!c) continue;
            if (evs[i].events & EPOLLOUT) {
                ssize_t w = write(fd, c->out + c->out_off, c->out_len - c->out_off);
                if (w < 0 && errno != EAGAIN) {
                    drop(ep, fd);
                    continue;
                }
                if (w > 0) c->out_off += (size_t)w;
                if (c->out_off == c->out_len) {
                    c->out_len = c->out_off = 0;
                    struct epoll_event me = {.events = EPOLLIN, .data.fd = fd};
                    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &me);
                }
            }
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                ssize_t r = read(fd, c->in + c->len, BUF - 1 - c->len);
                if (r <= 0) {
                    if (r < 0 && errno == EAGAIN) continue;
                    drop(ep, fd);
                    continue;
                }
                c->len += (size_t)r;
                c->in[c->len] = 0;
                if (serve(ep, fd, c) < 0) drop(ep, fd);
            }
        }
    }
}
