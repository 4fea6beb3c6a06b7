// ReadableTypeName and CallableName (base/type_name.h): the names the ranks compare in the layout
// of an agreement, so two different callables must be named differently, one callable alike.
#include "base/type_name.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>

#include "gtest/gtest.h"

namespace ember {
namespace {

struct Functor {
  double operator()(int x) const { return x; }
};

double Halve(int x) { return x / 2.0; }
double Double(int x) { return x * 2.0; }

double NoThrow(int x) noexcept { return x; }
float Narrow(int x) { return static_cast<float>(x); }

// The names of a few callables, as this process computes them.
std::string Names() {
  std::function<double(int)> lambda = [](int x) { return x * 3.0; };
  return CallableName(std::function<double(int)>(&Halve)) + " " + CallableName(lambda);
}

// Run as a child (below): print Names() and leave before gtest starts.
const bool kChild = [] {
  if (std::getenv("EMBER_TYPE_NAME_CHILD") == nullptr) return false;
  std::printf("%s\n", Names().c_str());
  std::fflush(stdout);
  _exit(0);
}();

TEST(TypeNameTest, ReadableTypeNameDropsNamespaces) {
  EXPECT_EQ(ReadableTypeName(typeid(Functor)), "Functor");
}

TEST(TypeNameTest, LambdasAreToldApartAndNamedByTheirPlace) {
  std::function<double(int)> a = [](int x) { return x + 1.0; };
  std::function<double(int)> b = [](int x) { return x + 1.0; };  // same body, another lambda
  const std::string name_a = CallableName(a);
  const std::string name_b = CallableName(b);
  EXPECT_NE(name_a, name_b);
  EXPECT_NE(name_a.find("lambda"), std::string::npos) << name_a;
  // The enclosing function is named, its argument lists elided.
  EXPECT_NE(name_a.find("LambdasAreToldApartAndNamedByTheirPlace"), std::string::npos) << name_a;
  EXPECT_EQ(name_a.find("int"), std::string::npos) << name_a;
  // A copy holds the same callable: the same name.
  std::function<double(int)> copy = a;
  EXPECT_EQ(CallableName(copy), name_a);
}

TEST(TypeNameTest, FunctorsAreNamedByType) {
  EXPECT_EQ(CallableName(std::function<double(int)>(Functor{})), "Functor");
}

TEST(TypeNameTest, FunctionPointersAreToldApart) {
  const std::string halve = CallableName(std::function<double(int)>(&Halve));
  const std::string twice = CallableName(std::function<double(int)>(&Halve));
  const std::string dbl = CallableName(std::function<double(int)>(&Double));
  EXPECT_EQ(halve, twice);
  EXPECT_NE(halve, dbl);
  // Not the shared type "double (*)(int)": a symbol, or the module and an offset in it.
  EXPECT_EQ(halve.find("(*)"), std::string::npos) << halve;
  EXPECT_TRUE(halve.find("Halve") != std::string::npos || halve.find("+0x") != std::string::npos) << halve;
}

TEST(TypeNameTest, OtherFunctionPointerTypes) {
  // noexcept is tried always; another type when the caller lists it.
  const std::string no_throw = CallableName(std::function<double(int)>(&NoThrow));
  EXPECT_TRUE(no_throw.find("NoThrow") != std::string::npos || no_throw.find("+0x") != std::string::npos) << no_throw;
  const std::string narrow = CallableName<float (*)(int)>(std::function<double(int)>(&Narrow));
  EXPECT_TRUE(narrow.find("Narrow") != std::string::npos || narrow.find("+0x") != std::string::npos) << narrow;
  EXPECT_NE(narrow, CallableName<float (*)(int)>(std::function<double(int)>(&Halve)));
  // Not listed: named by its type only.
  EXPECT_EQ(CallableName(std::function<double(int)>(&Narrow)), "float (*)()");
}

// Another process of the same binary, started by another name (a symlink), at another load
// address: the same names. A rank's argv[0] must not enter them.
TEST(TypeNameTest, SameNamesInAnotherProcessStartedByAnotherPath) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::filesystem::path link = std::filesystem::path(tmp != nullptr ? tmp : "/tmp") / "renamed_binary";
  std::filesystem::remove(link);
  std::filesystem::create_symlink(std::filesystem::read_symlink("/proc/self/exe"), link);
  const std::string command = "EMBER_TYPE_NAME_CHILD=1 '" + link.string() + "'";
  FILE* child = popen(command.c_str(), "r");
  ASSERT_NE(child, nullptr);
  char line[4096] = {};
  const bool got = std::fgets(line, sizeof(line), child) != nullptr;
  ASSERT_EQ(pclose(child), 0);
  ASSERT_TRUE(got);
  std::string names = line;
  if (!names.empty() && names.back() == '\n') names.pop_back();
  EXPECT_EQ(names, Names());
  EXPECT_EQ(names.find("renamed_binary"), std::string::npos) << names;
  EXPECT_FALSE(kChild);
}

TEST(TypeNameTest, EmptyFunction) {
  EXPECT_EQ(CallableName(std::function<double(int)>()), "<empty>");
}

}  // namespace
}  // namespace ember
