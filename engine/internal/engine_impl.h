// File: engine/internal/engine_impl.h
//
// The template internals of engine.h (step traits, handler adapters, data-source wrappers).
// Not an API: include engine/engine.h, which includes this at its end.
#ifndef EMBER_ENGINE_INTERNAL_ENGINE_IMPL_H_
#define EMBER_ENGINE_INTERNAL_ENGINE_IMPL_H_

#ifndef EMBER_ENGINE_ENGINE_H_
#error "include engine/engine.h, not engine/internal/engine_impl.h"
#endif

namespace ember {

namespace engine_internal {

template <typename T>
struct StepTraits : StepTraits<decltype(&T::operator())> {};
template <typename C, typename R, typename E, typename B>
struct StepTraits<R (C::*)(E, B) const> {
  using Batch = std::remove_cvref_t<B>;
};
template <typename C, typename R, typename E, typename B>
struct StepTraits<R (C::*)(E, B)> {
  using Batch = std::remove_cvref_t<B>;
};
template <typename R, typename E, typename B>
struct StepTraits<R (*)(E, B)> {
  using Batch = std::remove_cvref_t<B>;
};

template <typename T>
struct IsStatusOr : std::false_type {};
template <typename T>
struct IsStatusOr<absl::StatusOr<T>> : std::true_type {};

template <typename T>
struct IsOwnedHandler : std::false_type {};
template <typename T>
struct IsOwnedHandler<std::unique_ptr<T>> : std::true_type {};

template <typename C>
concept HasSize = requires(const C& c) { std::size(c); };

}  // namespace engine_internal

template <typename Container>
class Engine::ContainerIter final : public Engine::DataIter {
 public:
  explicit ContainerIter(const Container& data)
      : data_(data), it_(std::begin(data)), end_(std::end(data)) {}
  const void* Next() override {
    if (it_ == end_) return nullptr;
    const auto& batch = *it_;
    ++it_;
    return static_cast<const void*>(&batch);
  }
  void Restart() override { it_ = std::begin(data_); }

 private:
  const Container& data_;
  decltype(std::begin(std::declval<const Container&>())) it_;
  decltype(std::end(std::declval<const Container&>())) end_;
};

template <typename Batch>
class Engine::SourceIter final : public Engine::DataIter {
 public:
  explicit SourceIter(DataSource<Batch>& source) : source_(source) {}
  const void* Next() override { return static_cast<const void*>(source_.Next()); }
  void Restart() override { source_.Restart(); }

 private:
  DataSource<Batch>& source_;
};

template <typename R>
void Engine::StoreOutput(Engine& engine, R&& result) {
  using T = std::remove_cvref_t<R>;
  if constexpr (std::is_same_v<T, absl::Status>) {
    ThrowIfError(std::forward<R>(result));
  } else if constexpr (engine_internal::IsStatusOr<T>::value) {
    if (!result.ok()) throw StatusError(result.status());
    using V = std::remove_cvref_t<decltype(*result)>;
    engine.state_.output.template emplace<V>(*std::forward<R>(result));
  } else if constexpr (std::is_same_v<T, std::any>) {
    engine.state_.output = std::forward<R>(result);  // a step that returns std::any
  } else {
    engine.state_.output.template emplace<T>(std::forward<R>(result));
  }
}

template <typename Step>
Engine::Engine(Step step) : self_(std::make_shared<Engine*>(this)) {
  handlers_.resize(Event::kFirstCustomId);
  if constexpr (std::is_invocable_v<Step&, Engine&>) {
    step_batch_type_ = nullptr;
    step_ = [step = std::move(step)](Engine& engine, const void*) mutable {
      if constexpr (std::is_void_v<std::invoke_result_t<Step&, Engine&>>) {
        step(engine);
      } else {
        StoreOutput(engine, step(engine));
      }
    };
  } else {
    using Batch = typename engine_internal::StepTraits<Step>::Batch;
    static_assert(std::is_invocable_v<Step&, Engine&, const Batch&>,
                  "the step must be callable as step(Engine&, const Batch&) or step(Engine&)");
    step_batch_type_ = &typeid(Batch);
    step_ = [step = std::move(step)](Engine& engine, const void* batch) mutable {
      const Batch& b = *static_cast<const Batch*>(batch);
      if constexpr (std::is_void_v<std::invoke_result_t<Step&, Engine&, const Batch&>>) {
        step(engine, b);
      } else {
        StoreOutput(engine, step(engine, b));
      }
    };
  }
}

template <typename F>
void Engine::InvokeHandler(F& f, Engine& engine) {
  if constexpr (std::is_invocable_v<F&, Engine&, std::exception_ptr>) {
    using R = std::invoke_result_t<F&, Engine&, std::exception_ptr>;
    if constexpr (std::is_void_v<R>) {
      f(engine, engine.current_exception());
    } else {
      ThrowIfError(f(engine, engine.current_exception()));
    }
  } else if constexpr (std::is_invocable_v<F&, Engine&>) {
    if constexpr (std::is_void_v<std::invoke_result_t<F&, Engine&>>) {
      f(engine);
    } else {
      ThrowIfError(f(engine));
    }
  } else {
    static_assert(std::is_invocable_v<F&>,
                  "a handler must be callable as h(Engine&), h(), or h(Engine&, "
                  "std::exception_ptr) for EXCEPTION_RAISED");
    if constexpr (std::is_void_v<std::invoke_result_t<F&>>) {
      f();
    } else {
      ThrowIfError(f());
    }
  }
}

template <typename H>
Engine::HandlerFn Engine::MakeHandlerFn(H&& handler) {
  using D = std::remove_cvref_t<H>;
  if constexpr (engine_internal::IsOwnedHandler<D>::value) {
    std::shared_ptr<typename D::element_type> owned(std::move(handler));
    return [owned](Engine& engine) { InvokeHandler(*owned, engine); };
  } else if constexpr (std::is_copy_constructible_v<D>) {
    return [f = D(std::forward<H>(handler))](Engine& engine) mutable {
      InvokeHandler(f, engine);
    };
  } else if constexpr (std::is_lvalue_reference_v<H>) {
    D* f = &handler;
    return [f](Engine& engine) { InvokeHandler(*f, engine); };
  } else {
    auto owned = std::make_shared<D>(std::forward<H>(handler));
    return [owned](Engine& engine) { InvokeHandler(*owned, engine); };
  }
}

template <typename H>
absl::StatusOr<HandlerHandle> Engine::AddEventHandler(const EventList& events, H&& handler) {
  using D = std::remove_cvref_t<H>;
  if constexpr (engine_internal::IsStatusOr<D>::value) {
    if (!handler.ok()) return handler.status();
    return AddEventHandler(events, std::move(*handler));
  } else if constexpr (engine_internal::IsOwnedHandler<D>::value) {
    using T = typename D::element_type;
    if constexpr (std::is_base_of_v<SynchronizedHandler, T>) {
      std::shared_ptr<T> owned(std::move(handler));
      SynchronizedHandler* sync = owned.get();
      return Register(events, nullptr, sync, std::move(owned));
    } else {
      return Register(events, MakeHandlerFn(std::forward<H>(handler)));
    }
  } else if constexpr (std::is_base_of_v<SynchronizedHandler, D>) {
    if constexpr (std::is_lvalue_reference_v<H>) {
      return Register(events, nullptr, &handler);  // referenced: must outlive its registration
    } else {
      auto owned = std::make_shared<D>(std::forward<H>(handler));
      SynchronizedHandler* sync = owned.get();
      return Register(events, nullptr, sync, std::move(owned));
    }
  } else {
    return Register(events, MakeHandlerFn(std::forward<H>(handler)));
  }
}

template <typename H>
HandlerHandle Engine::On(const EventList& events, H&& handler) {
  absl::StatusOr<HandlerHandle> handle = AddEventHandler(events, std::forward<H>(handler));
  if (handle.ok()) return *std::move(handle);
  if (registration_error_.ok()) registration_error_ = handle.status();
  return HandlerHandle();
}

template <typename Container>
  requires engine_internal::Iterable<Container>
absl::Status Engine::Run(const Container& data, RunOptions options) {
  using Batch = std::remove_cvref_t<decltype(*std::begin(data))>;
  static_assert(std::is_lvalue_reference_v<decltype(*std::begin(data))>,
                "Run(container) needs iterators that yield references; wrap other data in a "
                "DataSource");
  ContainerIter<Container> iter(data);
  std::optional<int64_t> length;
  if constexpr (engine_internal::HasSize<Container>) {
    length = static_cast<int64_t>(std::size(data));
  }
  return RunImpl(&iter, length, &typeid(Batch), options);
}

template <typename Batch>
absl::Status Engine::Run(DataSource<Batch>& data, RunOptions options) {
  SourceIter<Batch> iter(data);
  return RunImpl(&iter, data.size(), &typeid(Batch), options);
}

}  // namespace ember

#endif  // EMBER_ENGINE_INTERNAL_ENGINE_IMPL_H_
