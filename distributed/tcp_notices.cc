#include "distributed/tcp_notices.h"

#include <arpa/inet.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>

namespace ember::dist {
namespace {

constexpr char kNoticeMagic[] = "EMBN";
constexpr size_t kHeader = 12;  // magic, origin, length
constexpr auto kSendBudget = std::chrono::milliseconds(500);

std::string NoticeFrame(int origin, const std::string& text) {
  const uint32_t o = htonl(static_cast<uint32_t>(origin)), n = htonl(static_cast<uint32_t>(text.size()));
  return std::string(kNoticeMagic, 4) + std::string(reinterpret_cast<const char*>(&o), 4) +
         std::string(reinterpret_cast<const char*>(&n), 4) + text;
}

}  // namespace

TcpNotices::TcpNotices(int rank, int world_size, std::vector<int> connections)
    : rank_(rank), world_size_(world_size), peers_(static_cast<size_t>(std::max(world_size, 1))) {
  for (size_t r = 0; r < connections.size() && r < peers_.size(); ++r) peers_[r].fd = connections[r];
  for (size_t r = peers_.size(); r < connections.size(); ++r) {
    if (connections[r] >= 0) ::close(connections[r]);
  }
}

TcpNotices::~TcpNotices() {
  for (Peer& p : peers_) Drop(p);
}

void TcpNotices::Drop(Peer& p) {
  if (p.fd >= 0) ::close(p.fd);
  p.fd = -1;
  p.in.clear();
}

void TcpNotices::SendFrame(const std::string& frame, int except) {
  const auto until = std::chrono::steady_clock::now() + kSendBudget;
  for (int r = 0; r < static_cast<int>(peers_.size()); ++r) {
    Peer& p = peers_[static_cast<size_t>(r)];
    if (r == except || p.fd < 0) continue;
    size_t sent = 0;
    while (sent < frame.size()) {
      const ssize_t n = ::send(p.fd, frame.data() + sent, frame.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        sent += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) break;  // gone: the others may still hear it
      // Its buffer is full (a peer that does not read): wait while the budget lasts. Once it is
      // spent, each later peer gets one non-blocking try, so a stalled peer holds nobody.
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      pollfd w{p.fd, POLLOUT, 0};
      if (::poll(&w, 1, static_cast<int>(left.count())) == 0) break;
    }
    // A frame cut off would be misread with whatever follows it: that peer is dropped.
    if (sent < frame.size()) Drop(p);
  }
}

void TcpNotices::Send(const std::string& text) {
  MutexLock lock(&mu_);
  if (sent_ || world_size_ <= 1) return;
  sent_ = true;
  SendFrame(NoticeFrame(rank_, text.size() > kMaxNoticeBytes ? text.substr(0, kMaxNoticeBytes) : text), -1);
}

std::optional<std::pair<int, std::string>> TcpNotices::Poll() {
  MutexLock lock(&mu_);
  if (first_.has_value()) return first_;
  // One poll() for every connection (a check costs one system call, however many ranks): only
  // those with something to read (or closed) are read.
  std::vector<pollfd> polled;
  for (const Peer& p : peers_) polled.push_back({p.fd, POLLIN, 0});  // a negative fd is skipped
  int ready;
  do {
    ready = ::poll(polled.data(), polled.size(), 0);
  } while (ready < 0 && errno == EINTR);
  if (ready <= 0) return std::nullopt;
  for (int r = 0; r < static_cast<int>(peers_.size()); ++r) {
    Peer& p = peers_[static_cast<size_t>(r)];
    if (p.fd < 0 || polled[static_cast<size_t>(r)].revents == 0) continue;
    char buf[4096];
    while (true) {
      const ssize_t n = ::recv(p.fd, buf, sizeof(buf), MSG_DONTWAIT);
      if (n > 0) {
        p.in.append(buf, static_cast<size_t>(n));
        if (p.in.size() > kHeader + kMaxNoticeBytes) break;  // more than one notice: parse what is there
        continue;
      }
      if (n == 0 || (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)) {
        // Closed (the peer ended or died) or broken: no notice from it. A frame it finished
        // sending before closing is still read below.
        const int fd = p.fd;
        p.fd = -1;
        ::close(fd);
      }
      if (n < 0 && errno == EINTR) continue;
      break;
    }
    if (p.in.size() < kHeader) continue;
    if (p.in.compare(0, 4, kNoticeMagic, 4) != 0) {
      Drop(p);  // not Ember's: ignore the connection from now on
      continue;
    }
    uint32_t origin, length;
    std::memcpy(&origin, p.in.data() + 4, 4);
    std::memcpy(&length, p.in.data() + 8, 4);
    origin = ntohl(origin);
    length = ntohl(length);
    // Rank 0 hears each rank on that rank's own connection only (a frame naming another rank
    // would blame a healthy one); the others hear anyone's through rank 0.
    if (length > kMaxNoticeBytes || origin >= static_cast<uint32_t>(world_size_) || static_cast<int>(origin) == rank_ ||
        (rank_ == 0 && static_cast<int>(origin) != r)) {
      Drop(p);
      continue;
    }
    if (p.in.size() < kHeader + length) continue;  // the rest has not arrived yet
    std::string text = p.in.substr(kHeader, length);
    // Rank 0 passes a rank's notice on to the others (not back to the rank it came from).
    if (rank_ == 0) SendFrame(NoticeFrame(static_cast<int>(origin), text), r);
    first_.emplace(static_cast<int>(origin), std::move(text));
    return first_;
  }
  return std::nullopt;
}

}  // namespace ember::dist
