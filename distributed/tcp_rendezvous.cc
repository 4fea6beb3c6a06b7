#include "distributed/tcp_rendezvous.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace ember::dist {
namespace {

constexpr char kMagic[] = "EMBR";

class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(Fd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  int get() const { return fd_; }

 private:
  int fd_;
};

int MillisLeft(absl::Time deadline) {
  int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
  return ms < 0 ? 0 : static_cast<int>(std::min<int64_t>(ms, 1 << 30));
}

absl::Status WaitFor(int fd, short events, absl::Time deadline, const std::string& what) {
  pollfd p{fd, events, 0};
  int rc = ::poll(&p, 1, MillisLeft(deadline));
  if (rc == 0) return absl::DeadlineExceededError(absl::StrCat(what, ": timed out"));
  if (rc < 0) return absl::UnavailableError(absl::StrCat(what, ": ", std::strerror(errno)));
  return absl::OkStatus();
}

absl::Status SendAll(int fd, const std::string& data, absl::Time deadline) {
  size_t sent = 0;
  while (sent < data.size()) {
    if (absl::Status s = WaitFor(fd, POLLOUT, deadline, "rendezvous send"); !s.ok()) return s;
    ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno != EINTR && errno != EAGAIN) {
      return absl::UnavailableError(absl::StrCat("rendezvous send: ", std::strerror(errno)));
    }
    if (n > 0) sent += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> RecvAll(int fd, size_t size, absl::Time deadline) {
  std::string out(size, '\0');
  size_t got = 0;
  while (got < size) {
    if (absl::Status s = WaitFor(fd, POLLIN, deadline, "rendezvous receive"); !s.ok()) return s;
    ssize_t n = ::recv(fd, out.data() + got, size - got, 0);
    if (n == 0) return absl::UnavailableError("rendezvous receive: peer closed the connection");
    if (n < 0 && errno != EINTR && errno != EAGAIN) {
      return absl::UnavailableError(absl::StrCat("rendezvous receive: ", std::strerror(errno)));
    }
    if (n > 0) got += static_cast<size_t>(n);
  }
  return out;
}

std::string Frame(const std::string& payload) {
  uint32_t n = htonl(static_cast<uint32_t>(payload.size()));
  return std::string(kMagic, 4) + std::string(reinterpret_cast<const char*>(&n), 4) + payload;
}

}  // namespace

absl::StatusOr<std::string> ShareFromRank0(int rank, int world_size, const std::string& addr,
                                           int port, const std::string& payload,
                                           absl::Time deadline) {
  const std::string where = absl::StrCat(addr, ":", port);
  if (world_size <= 1) return payload;
  if (rank == 0) {
    Fd listener(::socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK, 0));
    if (listener.get() < 0) return absl::UnavailableError(absl::StrCat("socket: ", std::strerror(errno)));
    int on = 1, off = 0;
    ::setsockopt(listener.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    ::setsockopt(listener.get(), IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off));
    sockaddr_in6 sa{};
    sa.sin6_family = AF_INET6;
    sa.sin6_addr = in6addr_any;
    sa.sin6_port = htons(static_cast<uint16_t>(port));
    if (::bind(listener.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
      return absl::UnavailableError(
          absl::StrCat("rendezvous: cannot listen on port ", port, ": ", std::strerror(errno)));
    }
    ::listen(listener.get(), world_size);
    for (int served = 0; served < world_size - 1; ++served) {
      if (absl::Status s = WaitFor(listener.get(), POLLIN, deadline,
                                   absl::StrCat("rendezvous on ", where, " (", served, " of ",
                                                world_size - 1, " ranks connected)"));
          !s.ok()) {
        return s;
      }
      Fd peer(::accept4(listener.get(), nullptr, nullptr, SOCK_NONBLOCK));
      if (peer.get() < 0) {
        --served;
        continue;
      }
      if (absl::Status s = SendAll(peer.get(), Frame(payload), deadline); !s.ok()) return s;
    }
    return payload;
  }
  // Other ranks: connect, retrying until rank 0 listens.
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  const std::string port_text = std::to_string(port);
  while (true) {
    addrinfo* found = nullptr;
    int rc = ::getaddrinfo(addr.c_str(), port_text.c_str(), &hints, &found);
    if (rc != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("rendezvous: cannot resolve MASTER_ADDR '", addr, "': ", gai_strerror(rc)));
    }
    for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
      // Non-blocking connect, bounded by the deadline: an address that drops SYNs (a cut
      // link, a firewall) must not block for the kernel's minutes-long connect timeout.
      Fd fd(::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK, a->ai_protocol));
      if (fd.get() < 0) continue;
      if (::connect(fd.get(), a->ai_addr, a->ai_addrlen) != 0) {
        if (errno != EINPROGRESS) continue;
        if (!WaitFor(fd.get(), POLLOUT, deadline, "rendezvous connect").ok()) continue;
        int error = 0;
        socklen_t len = sizeof(error);
        if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &error, &len) != 0 || error != 0) continue;
      }
      ::freeaddrinfo(found);
      absl::StatusOr<std::string> head = RecvAll(fd.get(), 8, deadline);
      if (!head.ok()) return head.status();
      if (head->compare(0, 4, kMagic, 4) != 0) {
        return absl::DataLossError(absl::StrCat("rendezvous: ", where, " is not an Ember rank 0"));
      }
      uint32_t n;
      std::memcpy(&n, head->data() + 4, 4);
      return RecvAll(fd.get(), ntohl(n), deadline);
    }
    ::freeaddrinfo(found);
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("rendezvous: rank 0 never listened on ", where));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

}  // namespace ember::dist
