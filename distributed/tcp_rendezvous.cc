#include "distributed/tcp_rendezvous.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <utility>
#include <vector>

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
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      if (fd_ >= 0) ::close(fd_);
      fd_ = o.fd_;
      o.fd_ = -1;
    }
    return *this;
  }
  int get() const { return fd_; }
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_;
};

int MillisLeft(absl::Time deadline) {
  int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
  return ms < 0 ? 0 : static_cast<int>(std::min<int64_t>(ms, 1 << 30));
}

absl::Status WaitFor(int fd, short events, absl::Time deadline, const std::string& what) {
  pollfd p{fd, events, 0};
  int rc;
  // A signal (SIGUSR1 to a profiler, SIGCHLD) interrupts poll: wait again for the time left.
  do {
    rc = ::poll(&p, 1, MillisLeft(deadline));
  } while (rc < 0 && errno == EINTR);
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


// What a rank sends first: magic, protocol version, its rank. Rank 0 serves only connections that
// send it, so a stray connection (a port probe, a health check) is never counted as a rank.
constexpr char kHelloMagic[] = "EMBH";
constexpr uint32_t kVersion = 1;
constexpr size_t kHelloSize = 12;
// How long an accepted connection may take to say hello before it is dropped.
constexpr absl::Duration kHelloTimeout = absl::Seconds(5);

// GatherThroughRank0's hello (the common hello with magic "EMBG" and version 2, then the rank's
// WORLD_SIZE, so that rank 0 names a rank launched with another one), and the most a rank may
// send there.
constexpr char kGatherMagic[] = "EMBG";
constexpr uint32_t kGatherVersion = 2;
constexpr size_t kGatherHelloSize = kHelloSize + 4;
constexpr uint32_t kMaxGatherPayload = 16u << 20;

std::string Hello(int rank, const char* magic = kHelloMagic, uint32_t version = kVersion) {
  uint32_t v = htonl(version), r = htonl(static_cast<uint32_t>(rank));
  return std::string(magic, 4) + std::string(reinterpret_cast<const char*>(&v), 4) +
         std::string(reinterpret_cast<const char*>(&r), 4);
}

std::string GatherHello(int rank, int world_size) {
  uint32_t w = htonl(static_cast<uint32_t>(world_size));
  return Hello(rank, kGatherMagic, kGatherVersion) + std::string(reinterpret_cast<const char*>(&w), 4);
}

// The listener: IPv6 accepting IPv4 too (dual stack), or IPv4 alone where IPv6 is unavailable.
absl::StatusOr<Fd> Listen(int port, int backlog) {
  Fd v6(::socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK, 0));
  int on = 1, off = 0;
  if (v6.get() >= 0) {
    ::setsockopt(v6.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    if (::setsockopt(v6.get(), IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off)) == 0) {
      sockaddr_in6 sa{};
      sa.sin6_family = AF_INET6;
      sa.sin6_addr = in6addr_any;
      sa.sin6_port = htons(static_cast<uint16_t>(port));
      if (::bind(v6.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0 && ::listen(v6.get(), backlog) == 0) {
        return v6;
      }
      if (errno == EADDRINUSE) {
        return absl::UnavailableError(absl::StrCat("rendezvous: cannot listen on port ", port, ": ", std::strerror(errno)));
      }
    }
  }
  Fd v4(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0));
  if (v4.get() < 0) return absl::UnavailableError(absl::StrCat("socket: ", std::strerror(errno)));
  ::setsockopt(v4.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_ANY);
  sa.sin_port = htons(static_cast<uint16_t>(port));
  if (::bind(v4.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 || ::listen(v4.get(), backlog) != 0) {
    return absl::UnavailableError(absl::StrCat("rendezvous: cannot listen on port ", port, ": ", std::strerror(errno)));
  }
  return v4;
}

// Rank 0: accepts connections, and sends `payload` to each that says a valid hello of a rank not
// served yet, until every other rank is served. Connections that close, send anything else or
// stay silent for kHelloTimeout are dropped, uncounted.
absl::StatusOr<std::string> ServeRank0(int world_size, int port, const std::string& payload, absl::Time deadline,
                                       const std::string& where, std::vector<int>* keep = nullptr) {
  absl::StatusOr<Fd> listener = Listen(port, std::max(world_size, 16));
  if (!listener.ok()) return listener.status();
  struct Pending {
    Fd fd;
    std::string got;
    absl::Time until;
  };
  std::vector<Pending> pending;
  std::vector<bool> served(static_cast<size_t>(world_size), false);
  int count = 0, dropped = 0;
  while (count < world_size - 1) {
    const absl::Time now = absl::Now();
    if (now >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat("rendezvous on ", where, " (", count, " of ", world_size - 1,
                                                      " ranks connected", dropped > 0 ? absl::StrCat(
                                                          "; ", dropped, " other connection(s) dropped: no Ember hello") : "",
                                                      "): timed out"));
    }
    std::vector<pollfd> polled = {{listener->get(), POLLIN, 0}};
    absl::Time wake = deadline;
    for (const Pending& p : pending) {
      polled.push_back({p.fd.get(), POLLIN, 0});
      wake = std::min(wake, p.until);
    }
    const int64_t ms = std::clamp<int64_t>(absl::ToInt64Milliseconds(wake - now) + 1, 0, 1 << 30);
    if (::poll(polled.data(), polled.size(), static_cast<int>(ms)) < 0 && errno != EINTR) {
      return absl::UnavailableError(absl::StrCat("rendezvous on ", where, ": poll: ", std::strerror(errno)));
    }
    std::vector<Pending> still;
    for (size_t i = 0; i < pending.size(); ++i) {
      Pending& p = pending[i];
      bool drop = false;
      if (polled[i + 1].revents != 0) {
        char buf[kHelloSize];
        ssize_t n = ::recv(p.fd.get(), buf, kHelloSize - p.got.size(), 0);
        if (n > 0) {
          p.got.append(buf, static_cast<size_t>(n));
        } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
          drop = true;  // closed (a probe) or broken
        }
      }
      if (!drop && p.got.size() == kHelloSize) {
        uint32_t v, r;
        std::memcpy(&v, p.got.data() + 4, 4);
        std::memcpy(&r, p.got.data() + 8, 4);
        v = ntohl(v);
        r = ntohl(r);
        if (p.got.compare(0, 4, kHelloMagic, 4) == 0 && v == kVersion && r >= 1 &&
            r < static_cast<uint32_t>(world_size) && !served[r]) {
          if (absl::Status s = SendAll(p.fd.get(), Frame(payload), deadline); !s.ok()) return s;
          served[r] = true;
          ++count;
          if (keep != nullptr) (*keep)[r] = p.fd.release();
        } else {
          ++dropped;
        }
        continue;  // served or refused: closed either way
      }
      if (drop || absl::Now() >= p.until) {
        ++dropped;
        continue;
      }
      still.push_back(std::move(p));
    }
    pending = std::move(still);
    if (polled[0].revents != 0) {
      while (true) {
        Fd peer(::accept4(listener->get(), nullptr, nullptr, SOCK_NONBLOCK));
        if (peer.get() < 0) break;
        pending.push_back({std::move(peer), "", absl::Now() + kHelloTimeout});
      }
    }
  }
  return payload;
}


// Connects to rank 0 (non-blocking connect per address, retried until it listens or `deadline`).
absl::StatusOr<Fd> ConnectToRank0(const std::string& addr, int port, absl::Time deadline) {
  const std::string where = absl::StrCat(addr, ":", port);
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
      return fd;
    }
    ::freeaddrinfo(found);
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("rendezvous: rank 0 never listened on ", where));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

// Reads one Frame of at most `max_bytes`: a longer one (whatever else listens on the port) is
// refused before anything is allocated for it.
absl::StatusOr<std::string> ReceiveFrame(int fd, const std::string& where, absl::Time deadline,
                                         uint64_t max_bytes) {
  absl::StatusOr<std::string> head = RecvAll(fd, 8, deadline);
  if (!head.ok()) return head.status();
  if (head->compare(0, 4, kMagic, 4) != 0) {
    return absl::DataLossError(absl::StrCat("rendezvous: ", where, " is not an Ember rank 0"));
  }
  uint32_t n;
  std::memcpy(&n, head->data() + 4, 4);
  n = ntohl(n);
  if (n > max_bytes) {
    return absl::DataLossError(absl::StrCat("rendezvous: ", where, " announced an answer of ", n,
                                            " bytes, more than the ", max_bytes,
                                            " this rendezvous sends: not an Ember rank 0 of this job"));
  }
  return RecvAll(fd, n, deadline);
}

// The gather's table: world_size strings, each a 4-byte length (network order) and its bytes.
std::string Pack(const std::vector<std::string>& parts) {
  std::string out;
  for (const std::string& p : parts) {
    uint32_t n = htonl(static_cast<uint32_t>(p.size()));
    out.append(reinterpret_cast<const char*>(&n), 4);
    out += p;
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> Unpack(const std::string& table, int world_size) {
  std::vector<std::string> parts;
  size_t at = 0;
  while (at < table.size()) {
    if (table.size() - at < 4) return absl::DataLossError("truncated table");
    uint32_t n;
    std::memcpy(&n, table.data() + at, 4);
    n = ntohl(n);
    at += 4;
    if (table.size() - at < n) return absl::DataLossError("truncated table");
    parts.push_back(table.substr(at, n));
    at += n;
  }
  if (parts.size() != static_cast<size_t>(world_size)) {
    // Rank 0 answers with its own world size's entries: the launches disagree.
    return absl::FailedPreconditionError(absl::StrCat(
        "rank 0's table has ", parts.size(), " entries but this rank's WORLD_SIZE is ", world_size,
        ": the ranks were launched with different world sizes (check WORLD_SIZE, or --nnodes and "
        "--nproc_per_node, on every node)"));
  }
  return parts;
}

// Rank 0 of GatherThroughRank0: accepts connections and keeps each that says a valid gather
// hello of a rank not seen yet followed by a frame, until every other rank has; then answers them
// all with the table. Connections that close, send anything else or stay silent for
// kHelloTimeout before their payload is complete are dropped, uncounted.
absl::StatusOr<std::vector<std::string>> ServeGather(int world_size, int port, const std::string& payload,
                                                     absl::Time deadline, const std::string& where) {
  absl::StatusOr<Fd> listener = Listen(port, std::max(world_size, 16));
  if (!listener.ok()) return listener.status();
  struct Pending {
    Fd fd;
    std::string got;
    absl::Time until;
  };
  std::vector<Pending> pending;
  std::vector<Fd> joined(static_cast<size_t>(world_size));
  std::vector<std::string> parts(static_cast<size_t>(world_size));
  std::vector<bool> seen(static_cast<size_t>(world_size), false);
  parts[0] = payload;
  int count = 0, dropped = 0;
  while (count < world_size - 1) {
    const absl::Time now = absl::Now();
    if (now >= deadline) {
      std::string missing;
      for (int r = 1; r < world_size; ++r) {
        if (!seen[static_cast<size_t>(r)]) absl::StrAppend(&missing, missing.empty() ? "" : ", ", r);
      }
      return absl::DeadlineExceededError(absl::StrCat(
          "rendezvous on ", where, " (", count, " of ", world_size - 1, " ranks joined; missing rank(s) ", missing,
          dropped > 0 ? absl::StrCat("; ", dropped, " other connection(s) dropped: no Ember hello") : "",
          "): timed out"));
    }
    std::vector<pollfd> polled = {{listener->get(), POLLIN, 0}};
    absl::Time wake = deadline;
    for (const Pending& p : pending) {
      polled.push_back({p.fd.get(), POLLIN, 0});
      wake = std::min(wake, p.until);
    }
    const int64_t ms = std::clamp<int64_t>(absl::ToInt64Milliseconds(wake - now) + 1, 0, 1 << 30);
    if (::poll(polled.data(), polled.size(), static_cast<int>(ms)) < 0 && errno != EINTR) {
      return absl::UnavailableError(absl::StrCat("rendezvous on ", where, ": poll: ", std::strerror(errno)));
    }
    std::vector<Pending> still;
    for (size_t i = 0; i < pending.size(); ++i) {
      Pending& p = pending[i];
      bool drop = false;
      if (polled[i + 1].revents != 0) {
        char buf[4096];
        ssize_t n = ::recv(p.fd.get(), buf, sizeof(buf), 0);
        if (n > 0) {
          p.got.append(buf, static_cast<size_t>(n));
        } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
          drop = true;  // closed (a probe) or broken
        }
      }
      // The hello, then the frame's head, then its payload.
      if (!drop && p.got.size() >= kGatherHelloSize) {
        uint32_t v, r, w;
        std::memcpy(&v, p.got.data() + 4, 4);
        std::memcpy(&r, p.got.data() + 8, 4);
        std::memcpy(&w, p.got.data() + 12, 4);
        v = ntohl(v);
        r = ntohl(r);
        w = ntohl(w);
        if (p.got.compare(0, 4, kGatherMagic, 4) == 0 && v == kGatherVersion &&
            w != static_cast<uint32_t>(world_size)) {
          // An Ember rank of another world: tell it (a table of this world's size, which it
          // refuses naming both sizes), then fail here, naming it, instead of at the deadline.
          (void)SendAll(p.fd.get(), Frame(Pack(parts)), std::min(deadline, absl::Now() + absl::Seconds(1)));
          return absl::FailedPreconditionError(absl::StrCat(
              "rendezvous on ", where, ": rank ", r, " was launched with WORLD_SIZE=", w, ", this rank 0 with WORLD_SIZE=",
              world_size, ": launch every rank with the same WORLD_SIZE (and the same MASTER_ADDR and MASTER_PORT)"));
        }
        if (p.got.compare(0, 4, kGatherMagic, 4) != 0 || v != kGatherVersion || r < 1 ||
            r >= static_cast<uint32_t>(world_size) || seen[r]) {
          drop = true;
        } else if (p.got.size() >= kGatherHelloSize + 8) {
          uint32_t n;
          std::memcpy(&n, p.got.data() + kGatherHelloSize + 4, 4);
          n = ntohl(n);
          if (p.got.compare(kGatherHelloSize, 4, kMagic, 4) != 0 || n > kMaxGatherPayload ||
              p.got.size() > kGatherHelloSize + 8 + n) {
            drop = true;
          } else if (p.got.size() == kGatherHelloSize + 8 + n) {
            seen[r] = true;
            parts[r] = p.got.substr(kGatherHelloSize + 8);
            joined[r] = std::move(p.fd);
            ++count;
            continue;
          }
        }
      }
      if (drop || absl::Now() >= p.until) {
        ++dropped;
        continue;
      }
      still.push_back(std::move(p));
    }
    pending = std::move(still);
    if (polled[0].revents != 0) {
      while (true) {
        Fd peer(::accept4(listener->get(), nullptr, nullptr, SOCK_NONBLOCK));
        if (peer.get() < 0) break;
        pending.push_back({std::move(peer), "", absl::Now() + kHelloTimeout});
      }
    }
  }
  const std::string answer = Frame(Pack(parts));
  for (int r = 1; r < world_size; ++r) {
    if (absl::Status s = SendAll(joined[static_cast<size_t>(r)].get(), answer, deadline); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("rendezvous on ", where, ": answering rank ", r, ": ", s.message()));
    }
  }
  return parts;
}
}  // namespace

absl::StatusOr<std::string> ShareFromRank0(int rank, int world_size, const std::string& addr,
                                           int port, const std::string& payload,
                                           absl::Time deadline) {
  const std::string where = absl::StrCat(addr, ":", port);
  if (world_size <= 1) return payload;
  if (payload.size() > kMaxGatherPayload) {
    return absl::InvalidArgumentError(absl::StrCat("rendezvous: a payload of ", payload.size(), " bytes (at most ",
                                                   kMaxGatherPayload, ")"));
  }
  if (rank == 0) return ServeRank0(world_size, port, payload, deadline, where);
  // Other ranks: connect, retrying until rank 0 listens.
  absl::StatusOr<Fd> fd = ConnectToRank0(addr, port, deadline);
  if (!fd.ok()) return fd.status();
  if (absl::Status s = SendAll(fd->get(), Hello(rank), deadline); !s.ok()) return s;
  return ReceiveFrame(fd->get(), where, deadline, kMaxGatherPayload);
}

absl::StatusOr<std::string> ShareFromRank0KeepingConnections(int rank, int world_size, const std::string& addr,
                                                             int port, const std::string& payload,
                                                             absl::Time deadline, std::vector<int>* connections) {
  connections->assign(static_cast<size_t>(std::max(world_size, 1)), -1);
  const std::string where = absl::StrCat(addr, ":", port);
  if (world_size <= 1) return payload;
  if (payload.size() > kMaxGatherPayload) {
    return absl::InvalidArgumentError(absl::StrCat("rendezvous: a payload of ", payload.size(), " bytes (at most ",
                                                   kMaxGatherPayload, ")"));
  }
  std::vector<int> kept(static_cast<size_t>(world_size), -1);
  auto close_kept = [&kept] {
    for (int& fd : kept) {
      if (fd >= 0) ::close(fd);
      fd = -1;
    }
  };
  if (rank == 0) {
    absl::StatusOr<std::string> served = ServeRank0(world_size, port, payload, deadline, where, &kept);
    if (!served.ok()) {
      close_kept();
      return served.status();
    }
    *connections = kept;
    return served;
  }
  absl::StatusOr<Fd> fd = ConnectToRank0(addr, port, deadline);
  if (!fd.ok()) return fd.status();
  if (absl::Status s = SendAll(fd->get(), Hello(rank), deadline); !s.ok()) return s;
  absl::StatusOr<std::string> got = ReceiveFrame(fd->get(), where, deadline, kMaxGatherPayload);
  if (!got.ok()) return got.status();
  (*connections)[0] = fd->release();
  return got;
}

absl::StatusOr<std::vector<std::string>> GatherThroughRank0(int rank, int world_size,
                                                            const std::string& addr, int port,
                                                            const std::string& payload,
                                                            absl::Time deadline) {
  const std::string where = absl::StrCat(addr, ":", port);
  if (world_size <= 1) return std::vector<std::string>{payload};
  if (payload.size() > kMaxGatherPayload) {
    return absl::InvalidArgumentError(absl::StrCat("rendezvous: a payload of ", payload.size(), " bytes (at most ",
                                                   kMaxGatherPayload, ")"));
  }
  if (rank == 0) return ServeGather(world_size, port, payload, deadline, where);
  absl::StatusOr<Fd> fd = ConnectToRank0(addr, port, deadline);
  if (!fd.ok()) return fd.status();
  if (absl::Status s = SendAll(fd->get(), GatherHello(rank, world_size) + Frame(payload), deadline); !s.ok()) return s;
  absl::StatusOr<std::string> table = ReceiveFrame(
      fd->get(), where, deadline, static_cast<uint64_t>(world_size) * (kMaxGatherPayload + 4));
  if (!table.ok()) return table.status();
  absl::StatusOr<std::vector<std::string>> all = Unpack(*table, world_size);
  if (!all.ok()) {
    return absl::Status(all.status().code(),
                        absl::StrCat("rendezvous on ", where, ": rank 0's answer: ", all.status().message()));
  }
  return all;
}

absl::StatusOr<std::string> LocalAddressToward(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* found = nullptr;
  if (int rc = ::getaddrinfo(host.c_str(), "9", &hints, &found); rc != 0 || found == nullptr) {
    return absl::UnavailableError(absl::StrCat("cannot resolve '", host, "': ", ::gai_strerror(rc)));
  }
  std::string error;
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      error = std::strerror(errno);
      continue;
    }
    sockaddr_storage local{};
    socklen_t len = sizeof(local);
    if (::connect(fd, a->ai_addr, a->ai_addrlen) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) != 0) {
      error = std::strerror(errno);
      ::close(fd);
      continue;
    }
    ::close(fd);
    char text[INET6_ADDRSTRLEN] = {};
    const void* raw = local.ss_family == AF_INET6
                          ? static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(&local)->sin6_addr)
                          : static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(&local)->sin_addr);
    if (::inet_ntop(local.ss_family, raw, text, sizeof(text)) == nullptr) {
      error = std::strerror(errno);
      continue;
    }
    ::freeaddrinfo(found);
    return std::string(text);
  }
  ::freeaddrinfo(found);
  return absl::UnavailableError(absl::StrCat("no route from this host to '", host, "': ", error));
}

}  // namespace ember::dist
