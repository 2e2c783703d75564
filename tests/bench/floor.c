/* The floor for tests/bench/cost.sh (issue 21, section 4): the least a
 * server can do per request on this machine. One thread, epoll, level
 * triggered; answers every request head (bytes up to CRLFCRLF) with a fixed
 * 200 OK, keep-alive, pipelined heads answered in order. No parsing, no
 * routing, no bodies. Loopback benchmark peer only, never a product.
 *   cc -O2 -o floor floor.c && ./floor PORT */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static const char OK[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                         "Content-Length: 3\r\n\r\nok\n";
enum { MAXFD = 65536, BUF = 8192 };
static char buf[MAXFD][4]; /* the last bytes of a head split across reads */

int main(int argc, char **argv) {
  int one = 1, ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(argc > 1 ? atoi(argv[1]) : 8080),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 1024)) return 1;
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls}, evs[64];
  epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
  static char in[BUF + 4], out[sizeof OK * (BUF / 2 + 2)];
  for (;;) {
    int n = epoll_wait(ep, evs, 64, -1);
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
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
      size_t k = 0;
      for (ssize_t j = 4; j < r + 4; j++)
        if (!memcmp(in + j - 3, "\r\n\r\n", 4)) memcpy(out + k, OK, sizeof OK - 1), k += sizeof OK - 1;
      memcpy(buf[fd], in + r, 4);
      if (k && write(fd, out, k) != (ssize_t)k) close(fd); /* a short write: give up on it */
    }
  }
}
