#include "dist/mpi_comm.h"

#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace lctx::dist {

using Clock = std::chrono::steady_clock;

std::string mpi_error_string(int code) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, buf, &len) != MPI_SUCCESS) return detail::cat("MPI error code ", code);
  return std::string(buf, len);
}

bool launched_with_mpi() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"}) {
    if (const char* v = std::getenv(var)) return std::atoi(v) > 1;
  }
  return false;
}

int mpi_init() {
  static const int rank = [] {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      int provided = 0;
      LCTX_MPI_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided));
      std::atexit([] {
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (!finalized) MPI_Finalize();
      });
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    int r = 0;
    LCTX_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &r));
    return r;
  }();
  set_error_rank(rank);
  return rank;
}

namespace {

constexpr int kTag = 17;
constexpr int64_t kMaxMessage = int64_t{1} << 30;  // elements per MPI message

MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::f64: return MPI_DOUBLE;
    case DType::f32: return MPI_FLOAT;
    case DType::bf16:
    case DType::f16: return MPI_UINT16_T;  // moved as bits; reductions are done by reduce_host
    case DType::i32: return MPI_INT32_T;
    case DType::i64: return MPI_INT64_T;
  }
  return MPI_DATATYPE_NULL;
}

void check_cpu(const char* op, const Buffer& b) {
  LCTX_CHECK(b.device.is_cpu(), "MpiComm::", op, ": ", b.str(), " must be on the CPU (NcclComm moves GPU tensors)");
}

int int_count(const char* op, int64_t n) {
  LCTX_CHECK(n <= INT_MAX, "MpiComm::", op, ": ", n, " elements per rank exceed MPI's int count");
  return static_cast<int>(n);
}

int comm_rank(MPI_Comm c) {
  int r = 0;
  LCTX_MPI_CHECK(MPI_Comm_rank(c, &r));
  return r;
}
int comm_size(MPI_Comm c) {
  int r = 0;
  LCTX_MPI_CHECK(MPI_Comm_size(c, &r));
  return r;
}

// Waits for all of `reqs` by polling MPI_Testall until the deadline (see OnTimeout) and
// returns their statuses.
std::vector<MPI_Status> wait_all(std::vector<MPI_Request>& reqs, const std::string& what, const CommOptions& opts,
                                 Clock::time_point start) {
  const auto deadline = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(opts.timeout_s));
  std::vector<MPI_Status> st(reqs.size());
  int spins = 0;
  for (;;) {
    int flag = 0;
    const int rc = MPI_Testall(static_cast<int>(reqs.size()), reqs.data(), &flag, st.data());
    if (rc != MPI_SUCCESS) {
      std::string detail = mpi_error_string(rc);
      if (rc == MPI_ERR_IN_STATUS)
        for (auto& s : st)
          if (s.MPI_ERROR != MPI_SUCCESS) detail += "; " + mpi_error_string(s.MPI_ERROR);
      LCTX_FAIL("MpiComm: ", what, " failed: ", detail);
    }
    if (flag) return st;
    if (Clock::now() > deadline) {
      std::string msg;
      try {
        LCTX_FAIL("MpiComm: ", what, " not complete after ", opts.timeout_s,
                  " s (a peer did not post the matching operation, or posted a different one)");
      } catch (const Error& e) {
        msg = e.what();
      }
      if (opts.on_timeout == OnTimeout::abort) {
        std::fprintf(stderr, "%s; aborting the job\n", msg.c_str());
        std::fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, 3);
      }
      for (auto& r : reqs) {
        if (r == MPI_REQUEST_NULL) continue;
        MPI_Cancel(&r);
        MPI_Request_free(&r);
      }
      throw Error(msg);
    }
    if (++spins > 1000) std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

class MpiRequest final : public RequestImpl {
 public:
  MpiRequest(std::string what, const CommOptions& opts) : what_(std::move(what)), opts_(opts), start_(Clock::now()) {}
  void post_send(const Buffer& b, int dst, MPI_Comm c) { post(b, dst, c, true); }
  void post_recv(const Buffer& b, int src, MPI_Comm c) { post(b, src, c, false); }
  void wait(Stream) override {
    if (reqs_.empty()) return;
    const auto st = wait_all(reqs_, what_, opts_, start_);
    reqs_.clear();
    // Every receive must have got exactly the elements it asked for (MPI accepts shorter).
    for (size_t i = 0; i < st.size(); ++i) {
      if (expect_[i] < 0) continue;
      int got = 0;
      LCTX_MPI_CHECK(MPI_Get_count(&st[i], type_, &got));
      LCTX_CHECK(got == expect_[i], "MpiComm: ", what_, ": received ", got, " elements, expected ", expect_[i],
                 " (the peer sent a different dtype or element count)");
    }
  }
  bool test() override {
    int flag = 0;
    LCTX_MPI_CHECK(MPI_Testall(static_cast<int>(reqs_.size()), reqs_.data(), &flag, MPI_STATUSES_IGNORE));
    return flag != 0;
  }
  ~MpiRequest() override {
    for (auto& r : reqs_) {
      if (r == MPI_REQUEST_NULL) continue;
      MPI_Cancel(&r);
      MPI_Request_free(&r);
    }
  }

 private:
  void post(const Buffer& b, int peer, MPI_Comm c, bool send) {
    check_cpu(send ? "isend" : "irecv", b);
    const int64_t es = static_cast<int64_t>(dtype_size(b.dtype));
    for (int64_t off = 0; off == 0 || off < b.count; off += kMaxMessage) {
      const int n = static_cast<int>(std::min(kMaxMessage, b.count - off));
      char* p = static_cast<char*>(b.data) + off * es;
      reqs_.push_back(MPI_REQUEST_NULL);
      if (send) {
        LCTX_MPI_CHECK(MPI_Isend(p, n, mpi_type(b.dtype), peer, kTag, c, &reqs_.back()));
        expect_.push_back(-1);
      } else {
        LCTX_MPI_CHECK(MPI_Irecv(p, n, mpi_type(b.dtype), peer, kTag, c, &reqs_.back()));
        expect_.push_back(n);
        type_ = mpi_type(b.dtype);
      }
      if (b.count == 0) break;
    }
  }

  std::string what_;
  CommOptions opts_;
  Clock::time_point start_;
  std::vector<MPI_Request> reqs_;
  std::vector<int64_t> expect_;  // elements per receive, -1 for sends
  MPI_Datatype type_ = MPI_BYTE;
};

}  // namespace

MpiComm::MpiComm(MPI_Comm comm, CommOptions opts) : Comm(comm_rank(comm), comm_size(comm), opts), comm_(comm) {
  LCTX_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
}

MpiComm::~MpiComm() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

std::unique_ptr<MpiComm> MpiComm::world(CommOptions opts) {
  mpi_init();
  MPI_Comm c;
  LCTX_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &c));
  return std::make_unique<MpiComm>(c, opts);
}

Request MpiComm::isend_impl(const Buffer& b, int dst, Stream) {
  check_peer("isend", dst);
  auto r = std::make_unique<MpiRequest>(detail::cat("send of ", b.str(), " to rank ", dst), opts_);
  r->post_send(b, dst, comm_);
  return Request(std::move(r));
}

Request MpiComm::irecv_impl(const Buffer& b, int src, Stream) {
  check_peer("irecv", src);
  auto r = std::make_unique<MpiRequest>(detail::cat("receive of ", b.str(), " from rank ", src), opts_);
  r->post_recv(b, src, comm_);
  return Request(std::move(r));
}

Request MpiComm::sendrecv_impl(const Buffer& send, int send_to, const Buffer& recv, int recv_from, Stream) {
  check_peer("sendrecv", send_to);
  check_peer("sendrecv", recv_from);
  auto r = std::make_unique<MpiRequest>(
      detail::cat("sendrecv (send ", send.str(), " to rank ", send_to, ", receive ", recv.str(), " from rank ",
                  recv_from, ")"),
      opts_);
  r->post_recv(recv, recv_from, comm_);
  r->post_send(send, send_to, comm_);
  return Request(std::move(r));
}

namespace {
void wait_one(MPI_Request req, const std::string& what, const CommOptions& opts, Clock::time_point start) {
  std::vector<MPI_Request> reqs{req};
  wait_all(reqs, what, opts, start);
}
}  // namespace

void MpiComm::all_reduce_impl(const Buffer& b, ReduceOp op, Stream) {
  check_cpu("all_reduce", b);
  const auto start = Clock::now();
  const std::string what = detail::cat("all_reduce(", reduce_op_name(op), ", ", b.str(), ")");
  const int64_t es = dtype_size(b.dtype), chunk = (b.count + size_ - 1) / size_;
  // Pad to size() equal chunks, reduce chunk r on rank r (in rank order), gather the chunks.
  std::vector<char> padded(size_ * chunk * es, 0), mine(size_ * chunk * es), reduced(chunk * es),
      full(size_ * chunk * es);
  if (b.count) std::memcpy(padded.data(), b.data, b.count * es);
  MPI_Request req;
  const int n = int_count("all_reduce", chunk);
  LCTX_MPI_CHECK(MPI_Ialltoall(padded.data(), n, mpi_type(b.dtype), mine.data(), n, mpi_type(b.dtype), comm_, &req));
  wait_one(req, what, opts_, start);
  std::vector<const void*> ptrs;
  for (int r = 0; r < size_; ++r) ptrs.push_back(mine.data() + r * chunk * es);
  reduce_host(reduced.data(), ptrs, chunk, b.dtype, op);
  LCTX_MPI_CHECK(MPI_Iallgather(reduced.data(), n, mpi_type(b.dtype), full.data(), n, mpi_type(b.dtype), comm_, &req));
  wait_one(req, what, opts_, start);
  if (b.count) std::memcpy(b.data, full.data(), b.count * es);
}

void MpiComm::all_gather_impl(const Buffer& in, const Buffer& out, Stream) {
  check_cpu("all_gather", in);
  const auto start = Clock::now();
  MPI_Request req;
  const int n = int_count("all_gather", in.count);
  LCTX_MPI_CHECK(MPI_Iallgather(in.data, n, mpi_type(in.dtype), out.data, n, mpi_type(in.dtype), comm_, &req));
  wait_one(req, detail::cat("all_gather(", in.str(), ")"), opts_, start);
}

void MpiComm::reduce_scatter_impl(const Buffer& in, const Buffer& out, ReduceOp op, Stream) {
  check_cpu("reduce_scatter", in);
  const auto start = Clock::now();
  const int64_t es = dtype_size(in.dtype);
  std::vector<char> mine(in.count * es);
  MPI_Request req;
  const int n = int_count("reduce_scatter", out.count);
  LCTX_MPI_CHECK(MPI_Ialltoall(in.data, n, mpi_type(in.dtype), mine.data(), n, mpi_type(in.dtype), comm_, &req));
  wait_one(req, detail::cat("reduce_scatter(", reduce_op_name(op), ", ", out.str(), ")"), opts_, start);
  std::vector<const void*> ptrs;
  for (int r = 0; r < size_; ++r) ptrs.push_back(mine.data() + r * out.count * es);
  reduce_host(out.data, ptrs, out.count, out.dtype, op);
}

void MpiComm::all_to_all_impl(const Buffer& in, const Buffer& out, Stream) {
  check_cpu("all_to_all", in);
  const auto start = Clock::now();
  MPI_Request req;
  const int n = int_count("all_to_all", in.count / size_);
  LCTX_MPI_CHECK(MPI_Ialltoall(in.data, n, mpi_type(in.dtype), out.data, n, mpi_type(in.dtype), comm_, &req));
  wait_one(req, detail::cat("all_to_all(", in.str(), ")"), opts_, start);
}

void MpiComm::broadcast_impl(const Buffer& b, int root, Stream) {
  check_cpu("broadcast", b);
  check_peer("broadcast", root);
  const auto start = Clock::now();
  MPI_Request req;
  LCTX_MPI_CHECK(MPI_Ibcast(b.data, int_count("broadcast", b.count), mpi_type(b.dtype), root, comm_, &req));
  wait_one(req, detail::cat("broadcast(root ", root, ", ", b.str(), ")"), opts_, start);
}

void MpiComm::barrier() {
  const auto start = Clock::now();
  MPI_Request req;
  LCTX_MPI_CHECK(MPI_Ibarrier(comm_, &req));
  wait_one(req, "barrier()", opts_, start);
}

std::unique_ptr<Comm> MpiComm::split(int color, int key) {
  MPI_Comm c;
  LCTX_MPI_CHECK(MPI_Comm_split(comm_, color, key, &c));
  return std::make_unique<MpiComm>(c, opts_);
}

}  // namespace lctx::dist
