#include "dist/sim_comm.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include "core/cuda_check.h"

namespace lctx::dist {

using Clock = std::chrono::steady_clock;

namespace {

#ifdef LCTX_HAVE_CUDA
struct Event {
  cudaEvent_t e = nullptr;
  Event() { LCTX_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming)); }
  ~Event() { cudaEventDestroy(e); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
};
#endif

bool on_gpu(const Buffer& b) { return b.device.is_cuda(); }

// Element copy between two buffers (host or device memory); with device memory it runs on
// stream `s` and waits for it, so work queued on `s` afterwards is ordered after it.
void copy_elems(const Buffer& dst, int64_t dst_off, const Buffer& src, int64_t src_off, int64_t count, Stream s) {
  if (count == 0) return;
  const size_t es = dtype_size(src.dtype);
  char* d = static_cast<char*>(dst.data) + dst_off * es;
  const char* p = static_cast<const char*>(src.data) + src_off * es;
  if (!on_gpu(dst) && !on_gpu(src)) {
    std::memcpy(d, p, count * es);
    return;
  }
#ifdef LCTX_HAVE_CUDA
  LCTX_CUDA_CHECK(cudaMemcpyAsync(d, p, count * es, cudaMemcpyDefault, cuda_stream(s)));
  LCTX_CUDA_CHECK(cudaStreamSynchronize(cuda_stream(s)));
#else
  (void)s;
  LCTX_FAIL("SimComm: GPU buffer ", dst.str(), " in a build without CUDA");
#endif
}

// Host copy of `count` elements of b at `off`.
std::vector<char> host_copy(const Buffer& b, int64_t off, int64_t count, Stream s) {
  std::vector<char> h(count * dtype_size(b.dtype));
  copy_elems(Buffer{h.data(), count, b.dtype, Device::cpu()}, 0, b, off, count, s);
  return h;
}

// Copies host bytes `h` into b at element `off`.
void from_host(const Buffer& b, int64_t off, const std::vector<char>& h, Stream s) {
  const int64_t count = static_cast<int64_t>(h.size() / dtype_size(b.dtype));
  copy_elems(b, off, Buffer{const_cast<char*>(h.data()), count, b.dtype, Device::cpu()}, 0, count, s);
}

void sync_stream(const Buffer& b, Stream s) {
  if (on_gpu(b)) synchronize(s);
}

}  // namespace

// State shared by a simulated world and all worlds split from it: one lock, one condition
// variable and one failure flag, so a failure anywhere releases every rank.
struct SimRoot {
  CommOptions opts;
  std::mutex mu;
  std::condition_variable cv;
  bool failed = false;
  std::string failure;
  std::vector<std::shared_ptr<SimWorld>> worlds;  // for the end-of-run check; cleared by run_simulated
};

struct SimWorld {
  struct Op {  // one posted send or receive
    Buffer buf;
    bool done = false;
    Clock::time_point posted;
    std::string what;  // "send of f32[4] to rank 1 (message #0 on 0->1)"
#ifdef LCTX_HAVE_CUDA
    std::shared_ptr<Event> ready, finished;
#endif
  };
  struct Slot {  // one collective: the k-th collective call of every rank
    std::vector<std::string> desc;
    std::vector<int> color, key;
    std::vector<Buffer> in;
    int arrived = 0, departed = 0;
    bool checked = false;
    std::map<int, std::shared_ptr<SimWorld>> split;  // color -> new world
  };

  std::shared_ptr<SimRoot> root;
  int n = 0;
  std::vector<std::deque<std::shared_ptr<Op>>> sends, recvs;  // [src * n + dst]
  std::vector<int64_t> nsent, nrecv;                          // messages posted per pair
  std::vector<int64_t> coll_seq;                              // per rank
  std::map<int64_t, std::shared_ptr<Slot>> slots;

  SimWorld(std::shared_ptr<SimRoot> r, int size)
      : root(std::move(r)), n(size), sends(size * size), recvs(size * size), nsent(size * size), nrecv(size * size),
        coll_seq(size) {}

  // Caller holds root->mu.
  [[noreturn]] void fail_locked(const char* file, int line, const std::string& msg) {
    std::string full;
    try {
      detail::throw_error(file, line, msg);
    } catch (const Error& e) {
      full = e.what();
    }
    if (!root->failed) {
      root->failed = true;
      root->failure = full;
    }
    root->cv.notify_all();
    throw Error(full);
  }
  void throw_if_failed_locked() const {
    if (root->failed) throw CommAborted(detail::cat("rank ", error_rank(), " released: ", root->failure));
  }
  // Waits (lock held) until pred() or failure; on timeout fails the world with what().
  template <class Pred, class What>
  void wait_locked(std::unique_lock<std::mutex>& lk, Clock::time_point start, Pred pred, What what, const char* file,
                   int line) {
    const auto deadline = start + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(root->opts.timeout_s));
    while (!pred()) {
      throw_if_failed_locked();
      if (root->cv.wait_until(lk, deadline) == std::cv_status::timeout && !pred()) {
        throw_if_failed_locked();
        fail_locked(file, line, detail::cat(what(), " timed out after ", root->opts.timeout_s, " s"));
      }
    }
  }
};

namespace {

std::string rank_list(const std::vector<int>& rs) {
  std::ostringstream os;
  os << "{";
  for (size_t i = 0; i < rs.size(); ++i) os << (i ? "," : "") << rs[i];
  os << "}";
  return os.str();
}

// ---- point-to-point ----------------------------------------------------------------------

class SimRequest final : public RequestImpl {
 public:
  SimRequest(std::shared_ptr<SimWorld> w, std::vector<std::shared_ptr<SimWorld::Op>> ops)
      : w_(std::move(w)), ops_(std::move(ops)) {}
  void wait(Stream s) override {
    {
      std::unique_lock lk(w_->root->mu);
      for (auto& op : ops_) {
        w_->wait_locked(
            lk, op->posted, [&] { return op->done; },
            [&] { return detail::cat(op->what, ": no matching operation was posted (or it does not match), it"); },
            __FILE__, __LINE__);
      }
    }
#ifdef LCTX_HAVE_CUDA
    for (auto& op : ops_)
      if (op->finished) LCTX_CUDA_CHECK(cudaStreamWaitEvent(cuda_stream(s), op->finished->e, 0));
#else
    (void)s;
#endif
  }
  bool test() override {
    std::lock_guard lk(w_->root->mu);
    for (auto& op : ops_) {
      if (!op->done) return false;
#ifdef LCTX_HAVE_CUDA
      if (op->finished && cudaEventQuery(op->finished->e) != cudaSuccess) return false;
#endif
    }
    return true;
  }

 private:
  std::shared_ptr<SimWorld> w_;
  std::vector<std::shared_ptr<SimWorld::Op>> ops_;
};

enum class Dir { send, recv };

// Posts one send or receive; the second of a matching pair performs the copy.
std::shared_ptr<SimWorld::Op> post(SimWorld& w, Dir dir, const Buffer& b, int me, int peer, Stream s,
                                   void* copy_stream) {
  auto op = std::make_shared<SimWorld::Op>();
  op->buf = b;
  op->posted = Clock::now();
#ifdef LCTX_HAVE_CUDA
  if (on_gpu(b)) {
    op->ready = std::make_shared<Event>();
    LCTX_CUDA_CHECK(cudaEventRecord(op->ready->e, cuda_stream(s)));
  }
#else
  (void)s;
  (void)copy_stream;
  LCTX_CHECK(!on_gpu(b), "SimComm: GPU buffer ", b.str(), " in a build without CUDA");
#endif
  const int src = dir == Dir::send ? me : peer, dst = dir == Dir::send ? peer : me;
  const int key = src * w.n + dst;
  std::lock_guard lk(w.root->mu);
  w.throw_if_failed_locked();
  auto& seq = dir == Dir::send ? w.nsent[key] : w.nrecv[key];
  op->what = dir == Dir::send ? detail::cat("send of ", b.str(), " to rank ", dst)
                              : detail::cat("receive of ", b.str(), " from rank ", src);
  op->what += detail::cat(" (message #", seq++, " on ", src, "->", dst, ")");
  auto& other_q = dir == Dir::send ? w.recvs[key] : w.sends[key];
  if (other_q.empty()) {
    (dir == Dir::send ? w.sends[key] : w.recvs[key]).push_back(op);
    return op;
  }
  auto other = other_q.front();
  other_q.pop_front();
  auto& snd = dir == Dir::send ? op : other;
  auto& rcv = dir == Dir::send ? other : op;
  if (snd->buf.dtype != rcv->buf.dtype || snd->buf.count != rcv->buf.count)
    w.fail_locked(__FILE__, __LINE__,
                  detail::cat("point-to-point mismatch: ", snd->what, " met ", rcv->what,
                              " (dtype and element count must agree)"));
  if (!on_gpu(snd->buf) && !on_gpu(rcv->buf)) {
    if (snd->buf.count) std::memcpy(rcv->buf.data, snd->buf.data, snd->buf.count * dtype_size(snd->buf.dtype));
  } else {
#ifdef LCTX_HAVE_CUDA
    cudaStream_t cs = static_cast<cudaStream_t>(copy_stream);
    for (auto* o : {&snd, &rcv})
      if ((*o)->ready) LCTX_CUDA_CHECK(cudaStreamWaitEvent(cs, (*o)->ready->e, 0));
    if (snd->buf.count)
      LCTX_CUDA_CHECK(cudaMemcpyAsync(rcv->buf.data, snd->buf.data, snd->buf.count * dtype_size(snd->buf.dtype),
                                      cudaMemcpyDefault, cs));
    auto fin = std::make_shared<Event>();
    LCTX_CUDA_CHECK(cudaEventRecord(fin->e, cs));
    snd->finished = rcv->finished = fin;
#endif
  }
  snd->done = rcv->done = true;
  w.root->cv.notify_all();
  return op;
}

// ---- collectives -------------------------------------------------------------------------

// Enters collective number coll_seq[me] with description `desc`; returns when every rank has
// entered it with the same description (else the world fails).
std::shared_ptr<SimWorld::Slot> enter(SimWorld& w, int me, const std::string& desc, const Buffer& in, int color = 0,
                                      int key = 0) {
  const auto start = Clock::now();
  std::unique_lock lk(w.root->mu);
  w.throw_if_failed_locked();
  const int64_t seq = w.coll_seq[me]++;
  auto& slot = w.slots[seq];
  if (!slot) {
    slot = std::make_shared<SimWorld::Slot>();
    slot->desc.resize(w.n);
    slot->in.resize(w.n);
    slot->color.resize(w.n);
    slot->key.resize(w.n);
  }
  auto sl = slot;
  sl->desc[me] = desc;
  sl->in[me] = in;
  sl->color[me] = color;
  sl->key[me] = key;
  ++sl->arrived;
  w.root->cv.notify_all();
  w.wait_locked(
      lk, start, [&] { return sl->arrived == w.n; },
      [&] {
        std::vector<int> missing;
        for (int r = 0; r < w.n; ++r)
          if (sl->desc[r].empty()) missing.push_back(r);
        return detail::cat("collective #", seq, " (", desc, "): ranks ", rank_list(missing),
                           " never called it; it");
      },
      __FILE__, __LINE__);
  if (!sl->checked) {
    for (int r = 0; r < w.n; ++r)
      if (sl->desc[r] != sl->desc[0])
        w.fail_locked(__FILE__, __LINE__,
                      detail::cat("collective #", seq, " mismatch: rank 0 called ", sl->desc[0], ", rank ", r,
                                  " called ", sl->desc[r]));
    sl->checked = true;
  }
  return sl;
}

// Leaves a collective: returns when every rank has finished reading the others' inputs.
void leave(SimWorld& w, const std::shared_ptr<SimWorld::Slot>& sl, const std::string& desc) {
  const auto start = Clock::now();
  std::unique_lock lk(w.root->mu);
  ++sl->departed;
  w.root->cv.notify_all();
  w.wait_locked(
      lk, start, [&] { return sl->departed == w.n; },
      [&] { return detail::cat("leaving collective (", desc, "): not every rank finished it; it"); }, __FILE__,
      __LINE__);
  for (auto it = w.slots.begin(); it != w.slots.end();) it = (it->second == sl) ? w.slots.erase(it) : std::next(it);
}

std::string describe(const char* op, const Buffer& b, const std::string& extra = "") {
  return detail::cat(op, "(", dtype_name(b.dtype), "[", b.count, "]", extra.empty() ? "" : ", ", extra, ")");
}

}  // namespace

SimComm::SimComm(std::shared_ptr<SimWorld> world, int rank) : Comm(rank, world->n, world->root->opts), world_(world) {}

void* SimComm::copy_stream(const Buffer& b) {
#ifdef LCTX_HAVE_CUDA
  if (!on_gpu(b)) return copy_stream_;
  if (!copy_stream_) {  // created on the device of the first GPU buffer
    copy_device_ = b.device.index;
    LCTX_CUDA_CHECK(cudaSetDevice(copy_device_));
    cudaStream_t cs;
    LCTX_CUDA_CHECK(cudaStreamCreateWithFlags(&cs, cudaStreamNonBlocking));
    copy_stream_ = cs;
  }
  LCTX_CHECK(b.device.index == copy_device_, "SimComm: ", b.str(), " is not on cuda:", copy_device_,
             ", the GPU of this rank's earlier buffers");
#else
  (void)b;
#endif
  return copy_stream_;
}

SimComm::~SimComm() {
#ifdef LCTX_HAVE_CUDA
  if (copy_stream_) {
    cudaStreamSynchronize(static_cast<cudaStream_t>(copy_stream_));
    cudaStreamDestroy(static_cast<cudaStream_t>(copy_stream_));
  }
#endif
}

void SimComm::fail(const std::string& message) {
  std::lock_guard lk(world_->root->mu);
  if (!world_->root->failed) {
    world_->root->failed = true;
    world_->root->failure = message;
  }
  world_->root->cv.notify_all();
}

Request SimComm::isend_impl(const Buffer& b, int dst, Stream s) {
  check_peer("isend", dst);
  return Request(std::make_unique<SimRequest>(world_, std::vector{post(*world_, Dir::send, b, rank_, dst, s, copy_stream(b))}));
}

Request SimComm::irecv_impl(const Buffer& b, int src, Stream s) {
  check_peer("irecv", src);
  return Request(std::make_unique<SimRequest>(world_, std::vector{post(*world_, Dir::recv, b, rank_, src, s, copy_stream(b))}));
}

Request SimComm::sendrecv_impl(const Buffer& send, int send_to, const Buffer& recv, int recv_from, Stream s) {
  check_peer("sendrecv", send_to);
  check_peer("sendrecv", recv_from);
  auto a = post(*world_, Dir::send, send, rank_, send_to, s, copy_stream(send));
  auto b = post(*world_, Dir::recv, recv, rank_, recv_from, s, copy_stream(recv));
  return Request(std::make_unique<SimRequest>(world_, std::vector{a, b}));
}

void SimComm::all_reduce_impl(const Buffer& b, ReduceOp op, Stream s) {
  const std::string desc = describe("all_reduce", b, std::string(reduce_op_name(op)));
  sync_stream(b, s);
  auto sl = enter(*world_, rank_, desc, b);
  std::vector<std::vector<char>> h;
  for (int r = 0; r < size_; ++r) h.push_back(host_copy(sl->in[r], 0, b.count, s));
  leave(*world_, sl, desc);
  std::vector<const void*> ptrs;
  for (auto& v : h) ptrs.push_back(v.data());
  std::vector<char> res(b.count * dtype_size(b.dtype));
  reduce_host(res.data(), ptrs, b.count, b.dtype, op);
  from_host(b, 0, res, s);
}

void SimComm::all_gather_impl(const Buffer& in, const Buffer& out, Stream s) {
  const std::string desc = describe("all_gather", in);
  sync_stream(in, s);
  auto sl = enter(*world_, rank_, desc, in);
  std::vector<std::vector<char>> h;
  for (int r = 0; r < size_; ++r) h.push_back(host_copy(sl->in[r], 0, in.count, s));
  leave(*world_, sl, desc);
  for (int r = 0; r < size_; ++r) from_host(out, r * in.count, h[r], s);
}

void SimComm::reduce_scatter_impl(const Buffer& in, const Buffer& out, ReduceOp op, Stream s) {
  const std::string desc = describe("reduce_scatter", out, std::string(reduce_op_name(op)));
  sync_stream(in, s);
  auto sl = enter(*world_, rank_, desc, in);
  std::vector<std::vector<char>> h;
  for (int r = 0; r < size_; ++r) h.push_back(host_copy(sl->in[r], rank_ * out.count, out.count, s));
  leave(*world_, sl, desc);
  std::vector<const void*> ptrs;
  for (auto& v : h) ptrs.push_back(v.data());
  std::vector<char> res(out.count * dtype_size(out.dtype));
  reduce_host(res.data(), ptrs, out.count, out.dtype, op);
  from_host(out, 0, res, s);
}

void SimComm::all_to_all_impl(const Buffer& in, const Buffer& out, Stream s) {
  const std::string desc = describe("all_to_all", in);
  const int64_t blk = in.count / size_;
  sync_stream(in, s);
  auto sl = enter(*world_, rank_, desc, in);
  std::vector<std::vector<char>> h;
  for (int r = 0; r < size_; ++r) h.push_back(host_copy(sl->in[r], rank_ * blk, blk, s));
  leave(*world_, sl, desc);
  for (int r = 0; r < size_; ++r) from_host(out, r * blk, h[r], s);
}

void SimComm::broadcast_impl(const Buffer& b, int root, Stream s) {
  check_peer("broadcast", root);
  const std::string desc = describe("broadcast", b, detail::cat("root ", root));
  sync_stream(b, s);
  auto sl = enter(*world_, rank_, desc, b);
  std::vector<char> h;
  if (rank_ != root) h = host_copy(sl->in[root], 0, b.count, s);
  leave(*world_, sl, desc);
  if (rank_ != root) from_host(b, 0, h, s);
}

void SimComm::barrier() {
  auto sl = enter(*world_, rank_, "barrier()", Buffer{});
  leave(*world_, sl, "barrier()");
}

std::unique_ptr<Comm> SimComm::split(int color, int key) {
  auto sl = enter(*world_, rank_, "split()", Buffer{}, color, key);
  std::vector<int> members;
  for (int r = 0; r < size_; ++r)
    if (sl->color[r] == color) members.push_back(r);
  std::stable_sort(members.begin(), members.end(), [&](int a, int b) { return sl->key[a] < sl->key[b]; });
  const int new_rank = static_cast<int>(std::find(members.begin(), members.end(), rank_) - members.begin());
  std::shared_ptr<SimWorld> sub;
  {
    std::lock_guard lk(world_->root->mu);
    auto& w = sl->split[color];
    if (!w) {
      w = std::make_shared<SimWorld>(world_->root, static_cast<int>(members.size()));
      world_->root->worlds.push_back(w);
    }
    sub = w;
  }
  leave(*world_, sl, "split()");
  return std::make_unique<SimComm>(sub, new_rank);
}

void run_simulated(int n, const std::function<void(Comm&)>& fn, CommOptions opts) {
  LCTX_CHECK(n >= 1, "run_simulated: need at least one rank, got ", n);
  auto root = std::make_shared<SimRoot>();
  root->opts = opts;
  auto world = std::make_shared<SimWorld>(root, n);
  root->worlds.push_back(world);
  std::vector<std::exception_ptr> errors(n);
  std::vector<bool> aborted(n, false);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      set_error_rank(r);
#ifdef LCTX_HAVE_CUDA
      if (cuda_available()) cudaSetDevice(0);
#endif
      std::unique_ptr<SimComm> comm;
      try {
        comm = std::make_unique<SimComm>(world, r);
        fn(*comm);
      } catch (const CommAborted&) {
        errors[r] = std::current_exception();
        aborted[r] = true;
      } catch (const std::exception& e) {
        errors[r] = std::current_exception();
        std::lock_guard lk(root->mu);
        if (!root->failed) {
          root->failed = true;
          root->failure = detail::cat("rank ", r, " failed: ", e.what());
        }
        root->cv.notify_all();
      } catch (...) {
        errors[r] = std::current_exception();
        std::lock_guard lk(root->mu);
        if (!root->failed) {
          root->failed = true;
          root->failure = detail::cat("rank ", r, " failed with a non-standard exception");
        }
        root->cv.notify_all();
      }
    });
  }
  for (auto& t : threads) t.join();
  std::vector<std::shared_ptr<SimWorld>> all;
  all.swap(root->worlds);  // breaks the world -> root -> world cycle
  for (int r = 0; r < n; ++r)
    if (errors[r] && !aborted[r]) std::rethrow_exception(errors[r]);
  for (int r = 0; r < n; ++r)
    if (errors[r]) std::rethrow_exception(errors[r]);
  // Every rank returned: any message still queued was never matched.
  std::string unmatched;
  for (auto& w : all) {
    for (auto* qs : {&w->sends, &w->recvs})
      for (auto& q : *qs)
        for (auto& op : q) unmatched += "\n  " + op->what;
    if (!w->slots.empty()) unmatched += detail::cat("\n  ", w->slots.size(), " collective(s) not joined by every rank");
  }
  LCTX_CHECK(unmatched.empty(), "run_simulated: all ranks returned with unmatched operations:", unmatched);
}

}  // namespace lctx::dist
