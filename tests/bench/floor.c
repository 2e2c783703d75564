/* The floor for tests/bench/cost.sh (issue 21, section 4): the least a
 * server can do per request on this machine. One thread, epoll, level
 * triggered; answers every request head (bytes up to CRLFCRLF) with a fixed
 * 200 OK, keep-alive, pipelined heads answered in order. No parsing, no
 * routing, no bodies. Loopback benchmark peer only, never a product.
 *   cc -O2 -pthread -o floor floor.c && ./floor PORT [HOPS]
 * HOPS (default 0) threads in a chain each pass every answer on before it
 * is written, through pipes, as tbot's request does (front, tiny_http's
 * worker, the serving loop, front: HOPS=2 is three cross-thread wake-ups):
 * the least a server built that way can spend (FLOOR_HOPS in cost.sh). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static const char OK[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                         "Content-Length: 3\r\n\r\nok\n";
enum { MAXFD = 65536, BUF = 8192 };
static char buf[MAXFD][4]; /* the last bytes of a head split across reads */
struct job { int fd, k; };     /* an answer of k bytes of OKs for fd */
static int chain[17][2];       /* pipe i feeds hop thread i; the last one feeds main */

static void *hop(void *arg) { /* passes each job on to the next pipe */
  long i = (long)arg;
  struct job j;
  while (read(chain[i][0], &j, sizeof j) == sizeof j)
    if (write(chain[i + 1][1], &j, sizeof j) != sizeof j) break;
  return NULL;
}

static void answer(int fd, int k) {
  static char out[sizeof OK * (BUF / 2 + 2)];
  for (int m = 0; m < k; m++) memcpy(out + m * (sizeof OK - 1), OK, sizeof OK - 1);
  size_t len = (size_t)k * (sizeof OK - 1);
  if (write(fd, out, len) != (ssize_t)len) close(fd); /* a short write: give up on it */
}

int main(int argc, char **argv) {
  int one = 1, ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(argc > 1 ? atoi(argv[1]) : 8080),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 1024)) return 1;
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls}, evs[64];
  epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
  long hops = argc > 2 ? atol(argv[2]) : 0;
  if (hops < 0 || hops > 16) return 1;
  for (long i = 0; i <= hops && hops; i++)
    if (pipe(chain[i])) return 1;
  for (long i = 0; i < hops; i++) {
    pthread_t t;
    if (pthread_create(&t, NULL, hop, (void *)i)) return 1;
  }
  int back = hops ? chain[hops][0] : -1; /* main's end of the chain */
  if (hops) { ev.data.fd = back; epoll_ctl(ep, EPOLL_CTL_ADD, back, &ev); }
  static char in[BUF + 4];
  for (;;) {
    int n = epoll_wait(ep, evs, 64, -1);
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      if (fd == back) {
        struct job j;
        if (read(back, &j, sizeof j) == sizeof j) answer(j.fd, j.k);
        continue;
      }
      if (fd == ls) {
        int c;
        while ((c = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
          if (c >= MAXFD) { close(c); continue; }
          setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          memset(buf[c], 0, 4);
          ev.data.fd = c;
          epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
        }
        continue;
      }
      ssize_t r = read(fd, in + 4, BUF);
      if (r <= 0) { close(fd); continue; } /* close drops it from epoll */
      memcpy(in, buf[fd], 4); /* CRLFCRLF may straddle two reads */
      int k = 0;
      for (ssize_t j = 4; j < r + 4; j++)
        if (!memcmp(in + j - 3, "\r\n\r\n", 4)) k++;
      memcpy(buf[fd], in + r, 4);
      if (!k) continue;
      struct job job = {fd, k};
      if (!hops) answer(fd, k);
      else if (write(chain[0][1], &job, sizeof job) != sizeof job) close(fd);
    }
  }
}
