#define _GNU_SOURCE
#include "CRabbitMQ.h"

#include <openssl/evp.h>

#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>

amqp_rpc_reply_t gw_login_plain(amqp_connection_state_t state, const char *vhost,
                                int channel_max, int frame_max, int heartbeat,
                                const char *user, const char *password,
                                const char *connection_name) {
  // rabbitmq-c merges these into its own client properties (capabilities included).
  // Without the connection.blocked capability the broker blocks a publishing connection
  // during a resource alarm without saying so, and publishes just wait.
  amqp_table_entry_t capabilities[1];
  capabilities[0].key = amqp_cstring_bytes("connection.blocked");
  capabilities[0].value.kind = AMQP_FIELD_KIND_BOOLEAN;
  capabilities[0].value.value.boolean = 1;
  amqp_table_entry_t entries[2];
  entries[0].key = amqp_cstring_bytes("capabilities");
  entries[0].value.kind = AMQP_FIELD_KIND_TABLE;
  entries[0].value.value.table.num_entries = 1;
  entries[0].value.value.table.entries = capabilities;
  entries[1].key = amqp_cstring_bytes("connection_name");
  entries[1].value.kind = AMQP_FIELD_KIND_UTF8;
  entries[1].value.value.bytes = amqp_cstring_bytes(connection_name);
  amqp_table_t properties = {.num_entries = 2, .entries = entries};
  return amqp_login_with_properties(state, vhost, channel_max, frame_max, heartbeat,
                                    &properties, AMQP_SASL_METHOD_PLAIN, user, password);
}

int gw_eventfd_create(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

void gw_eventfd_signal(int fd) {
  uint64_t one = 1;
  ssize_t ignored = write(fd, &one, sizeof(one));
  (void)ignored;
}

void gw_eventfd_drain(int fd) {
  uint64_t value;
  ssize_t ignored = read(fd, &value, sizeof(value));
  (void)ignored;
}

int gw_poll2(int sockfd, int wakefd, int timeout_ms) {
  struct pollfd fds[2];
  int n = 0;
  if (sockfd >= 0) {
    fds[n].fd = sockfd;
    fds[n].events = POLLIN;
    fds[n].revents = 0;
    n++;
  }
  int wake_index = -1;
  if (wakefd >= 0) {
    fds[n].fd = wakefd;
    fds[n].events = POLLIN;
    fds[n].revents = 0;
    wake_index = n;
    n++;
  }
  int rc = poll(fds, n, timeout_ms);
  if (rc < 0) return -1;
  int result = 0;
  if (sockfd >= 0 && fds[0].revents != 0) result |= 1;
  if (wake_index >= 0 && fds[wake_index].revents != 0) result |= 2;
  return result;
}

int gw_tcp_cork(int sockfd, int on) {
  return setsockopt(sockfd, IPPROTO_TCP, TCP_CORK, &on, sizeof(on));
}

int gw_set_thread_name(const char *name) {
  return pthread_setname_np(pthread_self(), name);
}

int gw_sha256(const void *data, size_t len, unsigned char *out) {
    unsigned int n = 0;
    return EVP_Digest(data, len, out, &n, EVP_sha256(), NULL);
}
